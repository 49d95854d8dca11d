"""After a repair: search for a trigger again on the repaired model, within the backdoor's mask size.

Why: unlearning a reversed trigger and then measuring that same trigger can only show that it was unlearned. A
reversed trigger is often a partial copy of the real one, and the part it missed keeps working (seed-2 cnn2-avg-bn
patch BadNet, before this: 38 % real attack success after repair against a 0.33 % estimate). So every repaired
model is searched again, for each suspected target (and source), for the trigger that sends most clean inputs there
with a mask no larger than ``MASK_BUDGET`` times the reversed trigger's. The budget is what makes a found trigger
evidence of a backdoor: clean classes need far larger masks (that is why the target was flagged), so on a model
without the backdoor a trigger this small sends few inputs anywhere. The search runs on the training part of the
decision data and its success is measured on clean inputs it did not see.
"""

from dataclasses import replace

import torch

from worker.engine.canonical import CanonicalModel
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.preprocess import Preprocessing, model_input
from worker.engine.repair.bounded import BoundedTrigger
from worker.engine.repair.raw import RawSet, trigger_success

#: The fresh trigger's mask may cover this many times the reversed trigger's L1 (chosen on the development set).
MASK_BUDGET = 1.0
STEPS = 150
BATCH = 24
#: Pick between the two starts on this many search images.
PICK_IMAGES = 200


def search_within_budget(model: CanonicalModel, preprocessing: Preprocessing, data: RawSet, held_out: RawSet,
                         triggers: list[ReversedTrigger], budget: float = MASK_BUDGET, steps: int = STEPS,
                         batch_size: int = BATCH, seed: int = 0) -> list[ReversedTrigger]:
    """One fresh trigger per reversed trigger (same target and source), searched on ``data`` with a mask of at most
    ``budget`` x the smallest reversed mask's L1; ``attack_success`` is its success on ``held_out``.

    The smallest mask sets every target's budget: the repair's own search also hands over runner-up targets with
    large masks (60 pixels on a development BadNet), and at half that size a clean class already takes 25 % of the
    inputs, which would be the model's ordinary frailty, not a backdoor."""
    found = []
    smallest = min((float(t.mask.sum()) for t in triggers), default=0.0)
    limit = max(budget * smallest, 1.0)
    for i, old in enumerate(triggers):
        pick = data.y == old.source if old.source is not None else data.y != old.target
        if not bool(pick.any()):
            continue
        trial = _search(model, preprocessing, data.x[pick], old, limit, steps, batch_size, seed + i)
        found.append(replace(trial, attack_success=trigger_success(model, held_out, preprocessing, [trial]) or 0.0))
    return found


def _search(model: CanonicalModel, preprocessing: Preprocessing, pool: torch.Tensor, old: ReversedTrigger,
            limit: float, steps: int, batch_size: int, seed: int) -> ReversedTrigger:
    """The trigger maximising the success towards ``old.target`` (from ``old.source``), its mask scaled down to
    L1 <= ``limit``; its ``attack_success`` is left at 0 for the caller to measure on held-out inputs.

    Two starts run together: the reversed trigger itself (what unlearning just targeted, so the search can walk
    from it to what still works) and a uniform mask with a random pattern (a trigger elsewhere)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    search = BoundedTrigger.around(old, limit, (float(pool.min()), float(pool.max())), device, elsewhere=generator)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(search.optimiser, T_max=max(steps, 1))
    layout = model.signature.input_layout

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        return model.logits(model_input(x, preprocessing, layout))

    for _ in range(steps):
        search.push(logits_of, pool[torch.randint(len(pool), (batch_size,), generator=generator)].to(device))
        schedule.step()
    with torch.no_grad():
        x = pool[:PICK_IMAGES].to(device)
        hits = logits_of(search.stamp(x)).argmax(1) == old.target
        best = int(hits.reshape(search.starts, len(x)).float().mean(1).argmax())
    return search.trigger(best)
