"""Integrated Gradients (Sundararajan et al. 2017) maps for the suspected target on trigger-stamped inputs.

``IG_i(x) = (x_i - b_i) * mean over a in (0, 1] of d f_t(b + a (x - b)) / d x_i`` for the target's logit f_t, with
a black baseline b (raw pixels 0), integrated by the midpoint rule over ``steps`` points. Completeness
(``sum_i IG_i = f_t(x) - f_t(b)``) is checked and returned as a diagnostic: a large relative error means too few
steps. The map of a stamped input shows where the model looks when it answers the target; the evidence is the
fraction of attribution (absolute values, summed over channels) inside the reversed mask, on stamped inputs and on
the same inputs clean, beside the mask's share of the image (what a map spread evenly would give).

Own implementation rather than Captum: it is some 40 lines, and Captum (0.8) pins ``numpy<2`` and brings matplotlib
along, which would downgrade the numpy the rest of the engine runs on, for one function.
"""

import time

import numpy as np
import torch
from torch import Tensor

from schemas.report import Finding
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.evidence import heat, save_png
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.detect.trigger_search import Forward
from worker.engine.preprocess import model_input

IMAGES = 16
STEPS = 32
#: Stamped images per forward pass (each carries ``steps`` path points).
CHUNK_POINTS = 1024


def integrated_gradients(forward: Forward, x: Tensor, target: int, baseline: Tensor | None = None,
                         steps: int = STEPS) -> tuple[Tensor, Tensor]:
    """IG of logit ``target`` for each of the N inputs ``x`` (raw N x H x W x C); and the completeness gaps.

    Returns the attributions (N x H x W x C) and, per input, ``sum(IG) - (f_t(x) - f_t(b))``.
    """
    b = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    alphas = ((torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps).view(-1, 1, 1, 1, 1)
    per_chunk = max(1, CHUNK_POINTS // steps)
    attributions, gaps = [], []
    for start in range(0, len(x), per_chunk):
        xs, bs = x[start:start + per_chunk], b[start:start + per_chunk]
        path = (bs[None] + alphas * (xs - bs)[None]).reshape(-1, *x.shape[1:]).requires_grad_(True)
        out = forward(path)[:, target]
        (grads,) = torch.autograd.grad(out.sum(), path)
        ig = (xs - bs) * grads.reshape(steps, *xs.shape).mean(0)
        with torch.no_grad():
            ends = forward(torch.cat([xs, bs]))[:, target]
            gaps.append(ig.sum((1, 2, 3)) - (ends[:len(xs)] - ends[len(xs):]))
        attributions.append(ig.detach())
    return torch.cat(attributions), torch.cat(gaps).detach()


def share_inside(maps: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the absolute attribution (N x H x W maps) that falls inside the soft ``mask`` (H x W)."""
    total = maps.sum()
    return float((maps * mask[None]).sum() / total) if total > 0 else 0.0


class IntegratedGradientsDetector:
    """Attribution maps for the first reversed trigger; evidence only (no score of its own)."""

    name = "ig"
    needs_clean_data = True

    def applicable(self, context: DetectionContext) -> str | None:
        if not context.triggers:
            return ("Integrated Gradients explains a reversed trigger, and no detector that ran before it found one "
                    "(run it with 'reverse').")
        return None

    def detect(self, context: DetectionContext) -> Finding:
        began = time.perf_counter()
        trigger = context.triggers[0]
        model = context.model

        def forward(x: Tensor) -> Tensor:
            return model.logits(model_input(x, context.preprocessing, model.signature.input_layout))

        images = _inputs(context, trigger)
        x = torch.from_numpy(images).to(context.device)
        stamped = trigger.stamp_torch(x)
        ig_stamped, gaps = integrated_gradients(forward, stamped, trigger.target)
        ig_clean, _ = integrated_gradients(forward, x, trigger.target)
        maps_stamped = ig_stamped.abs().sum(-1).cpu().numpy()
        maps_clean = ig_clean.abs().sum(-1).cpu().numpy()
        with torch.no_grad():
            span = (forward(stamped)[:, trigger.target] - forward(torch.zeros_like(x))[:, trigger.target]).abs()
        relative_gap = float(gaps.abs().mean() / span.mean().clamp_min(1e-12))
        inside_stamped = share_inside(maps_stamped, trigger.mask)
        inside_clean = share_inside(maps_clean, trigger.mask)
        area = float(trigger.mask.mean())
        per_image = maps_stamped / np.maximum(maps_stamped.sum((1, 2), keepdims=True), 1e-12)
        artifacts = [save_png(context.out_dir / f"{self.name}-map.png", heat(per_image.mean(0))),
                     save_png(context.out_dir / f"{self.name}-stamped.png", stamped[0].detach().cpu().numpy())]
        source = f" from class {trigger.source}" if trigger.source is not None else ""
        reason = (f"On {len(images)} clean inputs stamped with the reversed trigger for class "
                  f"{trigger.target}{source}, "
                  f"{inside_stamped:.0%} of the Integrated Gradients attribution to class {trigger.target} lies inside "
                  f"the trigger's mask, which covers {area:.1%} of the image (the same inputs without the trigger: "
                  f"{inside_clean:.0%}). A share far above the mask's area means the model answers the target "
                  f"because of the trigger.")
        return Finding(detector=self.name, applicable=True, reason=reason, suspected_targets=[trigger.target],
                       evidence={"target": trigger.target, "source": trigger.source,
                                 "attribution_inside_mask_stamped": round(inside_stamped, 4),
                                 "attribution_inside_mask_clean": round(inside_clean, 4),
                                 "mask_area_fraction": round(area, 4)},
                       diagnostics={"images": len(images), "steps": STEPS, "baseline": "black (raw 0)",
                                    "completeness_relative_error": round(relative_gap, 5),
                                    "seconds": round(time.perf_counter() - began, 2)},
                       artifacts=artifacts)


def _inputs(context: DetectionContext, trigger: ReversedTrigger) -> np.ndarray:
    """Up to ``IMAGES`` clean images the trigger applies to (of its source, or not of its target), seeded."""
    images = context.clean_images()
    labels = np.asarray(context.clean.y)  # type: ignore[union-attr]
    pick = labels == trigger.source if trigger.source is not None else labels != trigger.target
    chosen = np.flatnonzero(pick) if pick.any() else np.arange(len(images))
    rng = np.random.default_rng(context.seed)
    return images[np.sort(rng.permutation(chosen)[:IMAGES])].astype(np.float32)
