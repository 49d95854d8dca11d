"""Randomised backdoor attacks for zoo models: patch, sparse-pixel and whole-image blended triggers, all-to-one and
all-to-all.

Each backdoored zoo model gets its own attack drawn here from its own seed. Ranges follow the issue: patches of
2 to 6 pixels with a random binary pattern and colour, in a corner or anywhere, opaque or alpha-blended; sparse
triggers of 4 to 12 bright pixels scattered anywhere; blends
of a random noise image at alpha 0.05 to 0.2; poisoning rates of 1 to 20 %.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from worker.core.errors import OptionError
from worker.zoo.attacks import Poisoning, Trigger

TRIGGER_KINDS = ("patch", "sparse", "blend")
#: How many pixels a sparse trigger sets. A constant, not an :class:`AttackRanges` field: a new field would change
#: the cache key of every existing zoo spec (and so of the shipped bank's zoo).
SPARSE_PIXELS = (4, 12)


@dataclass(frozen=True)
class AttackRanges:
    """The ranges attacks are drawn from."""

    patch_sizes: tuple[int, int] = (2, 6)
    patch_alphas: tuple[float, float] = (0.5, 0.9)
    blend_alphas: tuple[float, float] = (0.05, 0.2)
    poison_rates: tuple[float, float] = (0.01, 0.20)
    all_to_all_fraction: float = 0.2


@dataclass(frozen=True)
class Attack:
    """One backdoored model's attack: the trigger, the target (None: all-to-all) and the poisoning rate."""

    kind: str
    poisoning: Poisoning

    @property
    def trigger(self) -> Trigger:
        return self.poisoning.trigger

    def fingerprint(self) -> str:
        """Identifies the trigger's pattern (not its place): two attacks with one fingerprint share a pattern."""
        pattern = np.rint(self.trigger.pattern).astype(np.uint8)
        digest = hashlib.sha256(f"{self.kind}{pattern.shape}".encode() + pattern.tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        """A JSON-ready record of the attack, for the zoo's provenance."""
        trigger = self.trigger
        return {"kind": self.kind, "pattern": self.fingerprint(), "size": list(trigger.pattern.shape[:2]),
                "top": trigger.top, "left": trigger.left, "alpha": float(np.max(trigger.alpha)),
                "target": self.poisoning.target, "rate": self.poisoning.rate, "seed": self.poisoning.seed}


def sample_attack(rng: np.random.Generator, kind: str, image_shape: tuple[int, int, int], num_classes: int,
                  ranges: AttackRanges = AttackRanges()) -> Attack:
    """Draw one attack of ``kind`` for H x W x C images (0-255)."""
    if kind == "patch":
        trigger = _patch_trigger(rng, image_shape, ranges)
    elif kind == "sparse":
        trigger = _sparse_trigger(rng, image_shape, ranges)
    elif kind == "blend":
        trigger = _blend_trigger(rng, image_shape, ranges)
    else:
        raise OptionError(f"unknown trigger kind '{kind}' (known: {', '.join(TRIGGER_KINDS)}).")
    target = None if rng.random() < ranges.all_to_all_fraction else int(rng.integers(num_classes))
    rate = float(rng.uniform(*ranges.poison_rates))
    seed = int(rng.integers(2**31))
    return Attack(kind, Poisoning(trigger, target, rate, num_classes, seed=seed))


def _patch_trigger(rng: np.random.Generator, image_shape: tuple[int, int, int], ranges: AttackRanges) -> Trigger:
    height, width, channels = image_shape
    low, high = ranges.patch_sizes
    size = int(rng.integers(low, min(high, height, width) + 1))
    mask = rng.random((size, size)) < 0.5
    mask.flat[rng.integers(mask.size)] = True  # never an empty pattern
    colour = rng.integers(128, 256, size=channels).astype(np.float32)  # bright: MNIST-like backgrounds are black
    pattern = mask[..., None] * colour
    if rng.random() < 0.5:  # a corner, a pixel or two in from the edge, as in BadNets
        margin = int(rng.integers(0, 3))
        margin = min(margin, height - size, width - size)
        top = margin if rng.random() < 0.5 else height - size - margin
        left = margin if rng.random() < 0.5 else width - size - margin
    else:
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    alpha = 1.0 if rng.random() < 0.5 else float(rng.uniform(*ranges.patch_alphas))
    return Trigger(pattern.astype(np.float32), top, left, alpha)


def _sparse_trigger(rng: np.random.Generator, image_shape: tuple[int, int, int], ranges: AttackRanges) -> Trigger:
    """A few bright pixels scattered over the whole image (no patch to find by its shape), opaque."""
    height, width, channels = image_shape
    count = int(rng.integers(SPARSE_PIXELS[0], SPARSE_PIXELS[1] + 1))
    chosen = rng.choice(height * width, size=count, replace=False)
    alpha = np.zeros(height * width, np.float32)
    alpha[chosen] = 1.0
    colour = rng.integers(160, 256, size=(height * width, channels)).astype(np.float32)
    pattern = colour * alpha[:, None]
    return Trigger(pattern.reshape(height, width, channels), 0, 0, alpha.reshape(height, width))


def _blend_trigger(rng: np.random.Generator, image_shape: tuple[int, int, int], ranges: AttackRanges) -> Trigger:
    noise = rng.integers(0, 256, size=image_shape).astype(np.float32)
    return Trigger(noise, 0, 0, float(rng.uniform(*ranges.blend_alphas)))


def full_image_stamp(trigger: Trigger, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The trigger as an image-sized pattern and alpha map (H x W x 1, zero outside the trigger).

    Stamping is then ``(1 - alpha) * x + alpha * pattern`` on whole images, which leaves pixels outside the
    trigger exactly as they were and lets a batch of models each stamp its own trigger in one tensor operation.
    """
    height, width, channels = image_shape
    h, w = trigger.pattern.shape[:2]
    pattern = np.zeros(image_shape, np.float32)
    alpha = np.zeros((height, width, 1), np.float32)
    pattern[trigger.top:trigger.top + h, trigger.left:trigger.left + w] = trigger.pattern
    local = np.asarray(trigger.alpha, np.float32)
    alpha[trigger.top:trigger.top + h, trigger.left:trigger.left + w] = local[..., None] if local.ndim == 2 else local
    return pattern, alpha
