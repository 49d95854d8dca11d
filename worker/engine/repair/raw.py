"""Clean data as raw pixels (N x H x W x C), where triggers are stamped, and the reversed triggers' figures on it."""

from dataclasses import dataclass

import torch
from torch import Tensor

from worker.engine.canonical import CanonicalModel
from worker.engine.preprocess import Preprocessing, model_input


@dataclass(frozen=True)
class RawSet:
    """Raw pixels N x H x W x C (before the model's preprocessing) and their true labels."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def part(self, index: Tensor) -> "RawSet":
        return RawSet(self.x[index], self.y[index])


def stamp_batch(x: Tensor, triggers: list, generator: torch.Generator, spread: bool = False) -> Tensor:
    """Each image stamped with one trigger drawn at random: x' = (1 - mask) x + mask pattern.

    ``spread``: each stamp's mask is scaled by a random factor in [1, 3] (clipped to 1) and, for half the images,
    widened by one pixel. A reversed trigger is a faint, partial copy of the real one (on the project's BadNet it
    covered 12 of the patch's 16 pixels at partial strength): unlearning it exactly left 1-2 % attack success;
    unlearning its neighbourhood reaches the real trigger too.
    """
    which = torch.randint(len(triggers), (len(x),), generator=generator)
    out = x.clone()
    for i, trigger in enumerate(triggers):
        chosen = torch.nonzero(which == i).flatten()
        if not len(chosen):
            continue
        mask = torch.as_tensor(trigger.mask, dtype=x.dtype, device=x.device).expand(len(chosen), -1, -1)
        pattern = torch.as_tensor(trigger.pattern, dtype=x.dtype, device=x.device)[None]
        if spread:
            scale = 1 + 2 * torch.rand(len(chosen), 1, 1, generator=generator).to(x.device)
            wide = torch.rand(len(chosen), generator=generator).to(x.device) < 0.5
            widened = torch.nn.functional.max_pool2d(mask[:, None], 3, 1, 1)[:, 0]
            mask = (torch.where(wide[:, None, None], widened, mask) * scale).clamp(max=1)
        m = mask[..., None]
        out[chosen] = (1 - m) * x[chosen] + m * pattern
    return out


@torch.no_grad()
def predict_raw(model: CanonicalModel, x: Tensor, preprocessing: Preprocessing, batch_size: int = 1024) -> Tensor:
    device = next(model.parameters()).device
    layout = model.signature.input_layout
    return torch.cat([model.logits(model_input(x[s:s + batch_size].to(device), preprocessing, layout)).argmax(1).cpu()
                      for s in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.long)


def trigger_success(model: CanonicalModel, data: RawSet, preprocessing: Preprocessing, triggers: list) -> float | None:
    """Estimated attack success: the share of clean inputs that a reversed trigger sends to its target.

    Inputs already of the target class (or, for a source-specific trigger, of another source) do not count;
    the highest rate over the triggers is the estimate. None without triggers.
    """
    rates = []
    for trigger in triggers:
        keep = data.y != trigger.target
        if trigger.source is not None:
            keep &= data.y == trigger.source
        if int(keep.sum()) == 0:
            continue
        predicted = predict_raw(model, trigger.stamp_torch(data.x[keep]), preprocessing)
        rates.append(float((predicted == trigger.target).float().mean()))
    return max(rates) if rates else None


def clean_accuracy(model: CanonicalModel, data: RawSet, preprocessing: Preprocessing) -> float:
    return float((predict_raw(model, data.x, preprocessing) == data.y).float().mean()) if len(data) else float("nan")
