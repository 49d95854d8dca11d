"""The search for a trigger again after a repair, and the rounds that unlearn what it finds (tiny planted backdoor)."""

import contextlib

import numpy as np
import pytest
import torch

from schemas.scan import RepairOptions
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.preprocess import Preprocessing
from worker.engine.repair.candidates import Built, RepairData, build_candidates, recheck
from worker.engine.repair.raw import clean_accuracy, trigger_success
from worker.engine.repair.recheck import search_within_budget
from worker.engine.repair.sweep import SweepResult
from worker.engine.repair.unlearn import Objective, TuneSettings, guarded_fine_tune

PRE = Preprocessing(255.0)


def _parts(planted):
    return planted.train.part(torch.arange(450)), planted.train.part(torch.arange(450, 600))


def test_a_fresh_search_finds_what_unlearning_a_partial_trigger_left(planted):
    """A reversed trigger covering one pixel of the 2 x 2 patch, unlearned exactly: its own estimate says the backdoor
    is gone, the real trigger still works, and a search on the repaired model finds a trigger that still works."""
    torch.set_num_threads(1)
    train, validation = _parts(planted)
    mask = np.zeros_like(planted.trigger.mask)
    mask[-3, -3] = 1
    partial = ReversedTrigger(0, mask, planted.trigger.pattern, 0.0)

    def score(model):
        accuracy = clean_accuracy(model, validation, PRE)
        return accuracy, (round((trigger_success(model, validation, PRE, [partial]) or 0) * 100), -accuracy)

    floor = clean_accuracy(planted.model, validation, PRE) - 0.02
    repaired = guarded_fine_tune(planted.model, PRE, train, validation, [partial],
                                 TuneSettings(epochs=10, spread=False, adversary_share=0.0), floor, score,
                                 teacher=planted.model).model
    assert repaired is not None
    assert trigger_success(repaired, validation, PRE, [partial]) < 0.05  # the old estimate: nothing left
    assert clean_accuracy(repaired, planted.poisoned, PRE) > 0.3  # but the real trigger still works
    fresh = search_within_budget(repaired, PRE, train, validation, [partial], budget=4.0)
    assert len(fresh) == 1 and fresh[0].target == 0 and float(fresh[0].mask.sum()) <= 4.0 + 1e-3
    assert fresh[0].attack_success > 0.3
    assert fresh[0].attack_success == trigger_success(repaired, validation, PRE, fresh)


def test_the_moving_trigger_unlearns_what_the_partial_trigger_missed(planted):
    """The same one-pixel partial trigger, now unlearned with the moving adversary beside it (its mask may cover the
    four pixels of the patch): the real trigger stops working, which exact unlearning alone did not achieve."""
    torch.set_num_threads(1)
    train, validation = _parts(planted)
    mask = np.zeros_like(planted.trigger.mask)
    mask[-3, -3] = 1
    partial = ReversedTrigger(0, mask, planted.trigger.pattern, 0.0)
    floor = clean_accuracy(planted.model, validation, PRE) - 0.02

    def score(model):
        return clean_accuracy(model, validation, PRE), (0, -clean_accuracy(model, validation, PRE))

    settings = TuneSettings(epochs=10, spread=False, adversary_share=0.2, adversary_budget=4.0)
    repaired = guarded_fine_tune(planted.model, PRE, train, validation, [partial], settings, floor, score,
                                 teacher=planted.model).model
    assert repaired is not None
    assert clean_accuracy(repaired, planted.poisoned, PRE) < 0.1
    assert clean_accuracy(repaired, planted.evaluation, PRE) >= clean_accuracy(planted.model, planted.evaluation,
                                                                               PRE) - 0.03


def test_the_moving_trigger_may_always_cover_two_percent_of_the_image(planted):
    """Twice a one-pixel reversed mask is 2 pixels; the floor lets the adversary cover 2 % of the 12 x 12 image."""
    mask = np.zeros_like(planted.trigger.mask)
    mask[-3, -3] = 1
    partial = ReversedTrigger(0, mask, planted.trigger.pattern, 0.0)
    x = planted.train.x
    objective = Objective(planted.model, PRE, [partial], TuneSettings(), (float(x.min()), float(x.max())),
                          tuple(x.shape[1:]))
    assert [a.limit for a in objective.adversaries] == [pytest.approx(0.02 * 144)]
    wide = Objective(planted.model, PRE, [partial], TuneSettings(adversary_budget=4.0), (0.0, 255.0),
                     tuple(x.shape[1:]))
    assert wide.adversaries[0].limit == pytest.approx(4.0)
    x_batch, y_batch = wide.batch(x[:20], planted.train.y[:20], torch.Generator().manual_seed(0))
    assert len(x_batch) == 20 and wide.stamped_rows == 6 + 6  # 30 % reversed stamps, 30 % moving stamps
    moved = wide.adversaries[0].trigger()
    assert float(moved.mask.sum()) <= 4.0 + 1e-3


def test_rounds_unlearn_a_trigger_found_again_and_the_estimate_is_about_the_model_handed_back(planted):
    """The backdoored model itself as a 'repair' that removed nothing: the fresh search finds the trigger, further
    rounds unlearn it, and the fresh triggers kept are those searched on the final model, not on the first."""
    torch.set_num_threads(1)
    train, validation = _parts(planted)
    data = RepairData(train, validation, PRE, planted.model)
    floor = clean_accuracy(planted.model, validation, PRE) - 0.02
    candidate = Built("unlearn", "unlearn", planted.model, False, fine_tuned=True, learning_rate=3e-3, floor=floor,
                      rounds=1)
    opts = RepairOptions(fine_tune_epochs=3)
    recheck(candidate, data, [planted.trigger], opts, "")
    assert candidate.rounds >= 2  # at least one round unlearned what the search found again
    assert candidate.model is not planted.model
    assert clean_accuracy(candidate.model, planted.poisoned, PRE) < 0.1  # the real backdoor went with it
    assert clean_accuracy(candidate.model, validation, PRE) >= floor
    assert len(candidate.fresh) == 1
    on_final = trigger_success(candidate.model, validation, PRE, candidate.fresh)
    assert candidate.fresh[0].attack_success == on_final  # measured on the model handed back
    assert on_final < 0.1
    # A search on the first model would have kept a trigger that works there; this one works far better on it.
    assert trigger_success(planted.model, validation, PRE, candidate.fresh) > on_final + 0.3


def test_with_several_suspects_the_smallest_trigger_is_also_unlearned_alone(planted):
    """Beside the planted trigger, a larger decoy towards an innocent class: ``unlearn`` shares its effort between
    them, ``unlearn-smallest`` unlearns the planted one alone and still searches both suspects again. With one
    reversed trigger there is no such candidate."""
    torch.set_num_threads(1)
    train, validation = _parts(planted)
    data = RepairData(train, validation, PRE, planted.model)
    mask = np.zeros_like(planted.trigger.mask)
    mask[:3, :3] = 1
    decoy = ReversedTrigger(1, mask, planted.trigger.pattern, 0.0)
    sweep = SweepResult("", [], {"decision": [1.0]})  # no pruning threshold is reached: unlearning candidates only
    opts = RepairOptions(fine_tune_epochs=3)

    def stage(name):
        return contextlib.nullcontext()

    built = build_candidates(planted.model, "", sweep, data, [decoy, planted.trigger], opts, stage)
    alone = next(b for b in built if b.name == "unlearn-smallest")
    assert "unlearn" in [b.name for b in built]
    assert alone.model is not None and alone.method == "unlearn"
    assert clean_accuracy(alone.model, planted.poisoned, PRE) < 0.1  # the planted backdoor is gone
    assert sorted(t.target for t in alone.fresh) == [0, 1]  # the search after repair covered both suspects
    assert alone.estimated_attack_success is not None
    single = build_candidates(planted.model, "", sweep, data, [planted.trigger], opts, stage)
    assert "unlearn-smallest" not in [b.name for b in single]
