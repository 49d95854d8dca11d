"""The clean images a trigger search optimises on and the held-out images that judge the trigger it finds.

With at least ``holdout_from`` images, a seeded quarter (at least 5) is held out. With fewer (five faces for a
1283-class DeepID model), every real image is needed for the search, so the held-out set is made of fresh mild
augmentations of them with another seed: the trigger is then judged on inputs it was not optimised on, but not on
other identities; the finding says so. Augmentation is mild on purpose: shifts of 3 pixels with flips left only
41-55 % of 55x47 faces correctly classified (METHODS.md), so here it is a shift of at most one pixel, a brightness
factor in [0.9, 1.1] and noise of 1 % of the value range; a copy the model no longer classifies as its label is
dropped, so the search never starts from an input that is already misclassified.
"""

from dataclasses import dataclass

import numpy as np
import torch

from worker.engine.detect.trigger_search import Forward

HOLDOUT_FROM = 20
AUGMENT_BELOW = 32
AUGMENTED_SIZE = 64
MAX_IMAGES = 256


@dataclass
class SearchData:
    images: np.ndarray  # N x H x W x C raw values, the search's
    labels: np.ndarray
    held_out: np.ndarray
    held_out_labels: np.ndarray
    real_images: int  # clean images given (after the MAX_IMAGES cap)
    augmented: int  # augmented copies added to the search's images
    held_out_kind: str  # 'real' or 'augmented'
    value_range: tuple[float, float]


def search_data(images: np.ndarray, labels: np.ndarray, forward: Forward, device: torch.device,
                seed: int = 0) -> SearchData:
    """Split (or augment) the clean ``images`` (N x H x W x C raw) for a trigger search."""
    rng = np.random.default_rng(seed)
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int64)
    if len(images) > MAX_IMAGES:
        keep = np.sort(rng.choice(len(images), MAX_IMAGES, replace=False))
        images, labels = images[keep], labels[keep]
    value_range = (float(min(images.min(), 0.0)), float(images.max()))
    if value_range[1] <= value_range[0]:
        value_range = (value_range[0], value_range[0] + 1.0)
    if len(images) >= HOLDOUT_FROM:
        order = rng.permutation(len(images))
        cut = max(5, len(images) // 4)
        held, used = order[:cut], order[cut:]
        held_out, held_labels, kind = images[held], labels[held], "real"
        images, labels = images[used], labels[used]
    else:
        held_out, held_labels = augment(images, labels, AUGMENTED_SIZE, value_range, forward, device,
                                        np.random.default_rng(seed + 1))
        kind = "augmented"
    added = 0
    if len(images) < AUGMENT_BELOW:
        extra, extra_labels = augment(images, labels, AUGMENTED_SIZE - len(images), value_range, forward, device, rng)
        images, labels, added = np.concatenate([images, extra]), np.concatenate([labels, extra_labels]), len(extra)
    return SearchData(images, labels, held_out, held_labels, len(images) - added + (len(held_out) if kind == "real"
                      else 0), added, kind, value_range)


def augment(images: np.ndarray, labels: np.ndarray, count: int, value_range: tuple[float, float], forward: Forward,
            device: torch.device, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` mildly changed copies of ``images`` that the model still classifies as their label."""
    lo, hi = value_range
    pick = rng.integers(len(images), size=count)
    out = np.empty((count, *images.shape[1:]), np.float32)
    for i, j in enumerate(pick):
        dy, dx = rng.integers(-1, 2, size=2)
        shifted = np.roll(images[j], (int(dy), int(dx)), axis=(0, 1))
        noise = rng.normal(0.0, 0.01 * (hi - lo), size=shifted.shape)
        out[i] = np.clip(shifted * rng.uniform(0.9, 1.1) + noise, lo, hi)
    with torch.no_grad():
        predicted = np.concatenate([forward(torch.from_numpy(part).to(device)).argmax(1).cpu().numpy()
                                    for part in np.array_split(out, max(1, count // 256))])
    kept = predicted == labels[pick]
    return out[kept], labels[pick][kept]
