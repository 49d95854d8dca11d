"""The choice rule: clean decision figures and the reversed-trigger estimate decide, within the accuracy budget."""

from worker.engine.repair.choose import Candidate, choose

MODEL = object()  # choose() only checks that a candidate has a model


def candidate(name, accuracy, estimate, agnostic=False, warning=None):
    return Candidate(name, name, None if warning else MODEL, agnostic, accuracy, estimate, warning)


def test_lowest_estimate_within_the_budget_wins_then_accuracy():
    candidates = [candidate("drop2", 0.97, 0.90), candidate("unlearn", 0.985, 0.02),
                  candidate("drop2-unlearn", 0.99, 0.024), candidate("harsh", 0.95, 0.0)]
    choice = choose(candidates, original_accuracy=0.99, original_estimate=0.9, max_drop=1.0)
    assert candidates[choice.index].name == "unlearn"  # the lower estimate, within the budget
    assert "harsh" in choice.reason and "more than 1 points below" in choice.reason
    candidates[2].estimated_attack_success = 0.02
    tied = choose(candidates, original_accuracy=0.99, original_estimate=0.9, max_drop=1.0)
    assert candidates[tied.index].name == "drop2-unlearn"  # equal estimates: the higher accuracy


def test_a_repair_that_does_not_reduce_the_reversed_trigger_is_never_recommended():
    candidates = [candidate("drop2", 0.99, 0.85), candidate("unlearn", 0.99, 0.5)]
    choice = choose(candidates, original_accuracy=0.99, original_estimate=0.9, max_drop=1.0)
    assert choice.index is None
    assert choice.reason.startswith("no repair is recommended")
    assert "not below half" in choice.reason


def test_failed_fine_tuning_is_not_offered_and_without_a_trigger_only_label_agnostic_repairs_count():
    candidates = [candidate("unlearn", 0.99, None, warning="fine-tuning failed"),
                  candidate("drop2", 0.99, None), candidate("adversarial", 0.985, None, agnostic=True)]
    choice = choose(candidates, original_accuracy=0.99, original_estimate=None, max_drop=1.0)
    assert candidates[choice.index].name == "adversarial"
    assert "not estimated" in choice.reason and "fine-tuning failed" in choice.reason
