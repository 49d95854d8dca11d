"""Trigger unlearning on a tiny planted backdoor, and the guard that stops a diverging fine-tuning."""

import torch

from worker.engine.preprocess import Preprocessing
from worker.engine.repair.candidates import Built, retry_notes
from worker.engine.repair.raw import clean_accuracy, trigger_success
from worker.engine.repair.unlearn import TuneSettings, guarded_fine_tune

PRE = Preprocessing(255.0)


def _score(planted, validation):
    def score(model):
        accuracy = clean_accuracy(model, validation, PRE)
        return accuracy, (round((trigger_success(model, validation, PRE, [planted.trigger]) or 0) * 100), -accuracy)
    return score


def test_unlearning_the_trigger_removes_the_planted_backdoor(planted):
    torch.set_num_threads(1)
    train, validation = planted.train.part(torch.arange(450)), planted.train.part(torch.arange(450, 600))
    before_accuracy = clean_accuracy(planted.model, planted.evaluation, PRE)
    assert clean_accuracy(planted.model, planted.poisoned, PRE) > 0.9, "the planted backdoor must work to begin with"
    result = guarded_fine_tune(planted.model, PRE, train, validation, [planted.trigger], TuneSettings(epochs=6),
                               clean_accuracy(planted.model, validation, PRE) - 0.02, _score(planted, validation))
    assert result.warning is None and result.model is not None
    assert result.learning_rate in (3e-4, 1e-3, 3e-3, 1e-2)  # found on the grid, not a fixed default
    assert clean_accuracy(result.model, planted.poisoned, PRE) < 0.1
    assert clean_accuracy(result.model, planted.evaluation, PRE) >= before_accuracy - 0.03
    assert clean_accuracy(planted.model, planted.poisoned, PRE) > 0.9  # the input model is left untouched


def test_a_diverging_fine_tuning_is_rejected_with_a_warning(planted):
    torch.set_num_threads(1)
    train, validation = planted.train.part(torch.arange(450)), planted.train.part(torch.arange(450, 600))
    floor = clean_accuracy(planted.model, validation, PRE) - 0.02
    result = guarded_fine_tune(planted.model, PRE, train, validation, [planted.trigger],
                               TuneSettings(epochs=2, learning_rate=1.0), floor, _score(planted, validation))
    assert result.model is None and result.kept_epoch is None
    assert result.rejected_epochs == [1, 2]
    assert "failed" in result.warning and "not offered" in result.warning


def test_a_found_rate_that_fails_the_guard_is_retried_lower(planted):
    """The guard here rejects any model whose weights moved more than 0.05 from the start: on this model, three
    epochs at the rate the trials find (1e-2) move them 0.07-0.10, at 3e-3 0.02-0.04."""
    torch.set_num_threads(1)
    train, validation = planted.train.part(torch.arange(450)), planted.train.part(torch.arange(450, 600))
    start = [p.detach().clone() for p in planted.model.parameters()]

    def score(model):
        moved = max(float((p.detach() - s).abs().max()) for p, s in zip(model.parameters(), start, strict=True))
        return (clean_accuracy(model, validation, PRE) if moved <= 0.05 else 0.0), (0,)

    result = guarded_fine_tune(planted.model, PRE, train, validation, [planted.trigger], TuneSettings(epochs=3), 0.5,
                               score)
    assert result.failed_rates == [1e-2]
    assert result.learning_rate == 3e-3 and result.model is not None and result.warning is None
    fixed = guarded_fine_tune(planted.model, PRE, train, validation, [planted.trigger],
                              TuneSettings(epochs=3, learning_rate=1e-2), 0.5, score)
    assert fixed.model is None and fixed.failed_rates == [1e-2]  # a rate the user set gets no second try
    assert "failed at learning rate 0.01" in fixed.warning


def test_the_report_says_which_candidates_were_kept_at_a_lower_rate():
    model = object()  # retry_notes only checks that a candidate has a model
    kept = Built("unlearn", "unlearn", model, False, learning_rate=3e-3, failed_learning_rates=[1e-2])
    failed = Built("adversarial", "adversarial", None, True, failed_learning_rates=[1e-2, 3e-3, 1e-3],
                   warning="fine-tuning failed")  # its own warning says so
    first = Built("drop2", "prune+unlearn", model, False, learning_rate=1e-3, failed_learning_rates=[1e-2, 3e-3])
    shared = Built("drop4", "prune+unlearn", model, False, learning_rate=1e-3, failed_learning_rates=[1e-2, 3e-3],
                   shares_repair_with="drop2")  # one repair, reported once
    untouched = Built("unlearn-smallest", "unlearn", model, False, learning_rate=1e-2)
    assert retry_notes([kept, failed, first, shared, untouched]) == [
        "unlearn: fine-tuning failed the guard at learning rate 0.01; the run at 0.003 is kept",
        "drop2: fine-tuning failed the guard at learning rate 0.01, 0.003; the run at 0.001 is kept"]
