"""Trigger unlearning on a tiny planted backdoor, and the guard that stops a diverging fine-tuning."""

import torch

from worker.engine.preprocess import Preprocessing
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
