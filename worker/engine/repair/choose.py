"""Which repair to recommend: decided on clean decision data and reversed triggers only, never on poisoned data.

Every candidate is scored on the validation part of the decision data (clean inputs no repair trained on): its
clean accuracy, and the estimated attack success, the share of those inputs that the reversed triggers, or the
trigger searched for again on the candidate itself (:mod:`worker.engine.repair.recheck`), send to their targets,
whichever is higher: a repair that leaves a working trigger does not look clean. A candidate is eligible when its
fine-tuning did not fail, its accuracy is within ``max_drop`` points of the original model's on the same inputs,
and it at least halves the original's estimated attack success. Among the eligible, the lowest estimate wins, then
the higher accuracy, then the simpler method (listed order). (Estimates were compared in whole percentage points
until stop 18; on the 19 development BadNets of seeds 1 and 11, replaying the choice on every built candidate, exact
estimates met the repair goal on 16 rows, whole points on 14.) When no
reversed trigger is known the estimate is unavailable, and only label-agnostic candidates can be recommended.
When nothing is eligible the report says so and no repair is recommended.
"""

from dataclasses import dataclass

from worker.engine.canonical import CanonicalModel


@dataclass
class Candidate:
    """One repaired model with the figures that may decide (decision data) and those that may not."""

    name: str  # e.g. "unlearn", "drop2+unlearn"
    method: str
    model: CanonicalModel | None
    label_agnostic: bool
    decision_accuracy: float | None = None
    estimated_attack_success: float | None = None
    warning: str | None = None


@dataclass(frozen=True)
class Choice:
    index: int | None
    reason: str


def choose(candidates: list[Candidate], original_accuracy: float, original_estimate: float | None,
           max_drop: float) -> Choice:
    floor = original_accuracy - max_drop / 100
    rejected: list[str] = []
    eligible: list[int] = []
    for i, c in enumerate(candidates):
        if c.model is None or c.warning:
            rejected.append(f"{c.name}: {c.warning or 'not built'}")
        elif c.decision_accuracy < floor - 1e-12:
            rejected.append(f"{c.name}: clean accuracy {c.decision_accuracy:.2%} is more than {max_drop:g} points "
                            f"below the original's {original_accuracy:.2%}")
        elif original_estimate is None and not c.label_agnostic:
            rejected.append(f"{c.name}: no reversed trigger to show that it removes anything")
        elif original_estimate is not None and c.estimated_attack_success > original_estimate / 2:
            rejected.append(f"{c.name}: estimated attack success {c.estimated_attack_success:.2%} is not below half "
                            f"the original's {original_estimate:.2%}")
        else:
            eligible.append(i)
    if not eligible:
        return Choice(None, "no repair is recommended: none removed the backdoor within the accuracy budget on "
                            "clean decision data (" + "; ".join(rejected) + ")")

    def key(i: int) -> tuple:
        c = candidates[i]
        return c.estimated_attack_success or 0.0, -c.decision_accuracy, i

    best = min(eligible, key=key)
    c = candidates[best]
    if original_estimate is None:
        why = (f"{c.name} ({c.method}) is label-agnostic and keeps clean accuracy at {c.decision_accuracy:.2%} "
               f"(original {original_accuracy:.2%}); no reversed trigger was found, so its effect is not estimated")
    else:
        why = (f"{c.name} ({c.method}): the lowest estimated attack success of the reversed trigger "
               f"({c.estimated_attack_success:.2%}, original {original_estimate:.2%}) at clean accuracy "
               f"{c.decision_accuracy:.2%} (original {original_accuracy:.2%}), among {len(eligible)} eligible of "
               f"{len(candidates)}")
    if rejected:
        why += "; not eligible: " + "; ".join(rejected)
    return Choice(best, why)
