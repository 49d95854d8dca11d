"""Which targets the repair's own trigger search hands to unlearning (the search itself runs in the scan tests)."""

import math

from worker.engine.repair.trigger_search import suspected_targets


def test_a_runner_up_close_to_the_smallest_mask_is_unlearned_too():
    """The masks a development BadNet's search found (its real target, 8, came second): both are kept, the next
    (1.5 x the smallest) is not."""
    sizes = [30.1, 124.5, 10.5, 21.8, 84.9, 22.9, 24.2, 22.2, 11.7, 15.9]
    assert suspected_targets(sizes) == [2, 8]


def test_a_clear_outlier_is_kept_alone_and_a_class_without_a_working_mask_never():
    sizes = [40.0, 3.0, 38.0, math.inf, 45.0, 41.0, 39.0, 44.0, 42.0, 36.0]
    assert suspected_targets(sizes) == [1]
    assert suspected_targets([math.inf] * 4) == []
