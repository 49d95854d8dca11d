"""What a model zoo is made of (:class:`ZooSpec`), and the plan of its candidate models, fixed by the seed.

Every candidate's family, split, clean-or-backdoored label, attack, preprocessing and seeds follow from the spec
alone, so a zoo is reproducible and its cache key is a hash of the spec and the data. Splits are by model, and
the validation and test splits never reuse a trigger pattern of the training split.
"""

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from worker.core.errors import OptionError
from worker.engine.preprocess import Preprocessing
from worker.zoo.architectures import FAMILIES, OWN_ARCHITECTURE
from worker.zoo.attack_sampling import TRIGGER_KINDS, Attack, AttackRanges, sample_attack
from worker.zoo.batched import OPTIMIZERS, TrainingSettings

SPLITS = ("train", "val", "test")
#: Preprocessing the zoo's models are trained with, drawn per model so that patterns learn to see through it.
#: Not (x/255 - 0.5)/0.5: on a -1 background, small ReLU nets learned most blended triggers too slowly.
DEFAULT_PREPROCESSINGS = (Preprocessing(255.0), Preprocessing(255.0, (0.1307,), (0.3081,)))
_MAX_PATTERN_DRAWS = 1000


@dataclass(frozen=True)
class ZooSpec:
    """A zoo: ``models_per_family`` candidates of each family, trained on the first ``train_images`` images of
    the data and judged on its last ``eval_images``; backdoored candidates keep only if their attack succeeds
    (>= ``min_attack_success``), all only within ``max_accuracy_gap`` of their family's clean mean accuracy."""

    input_shape: tuple[int, int, int]
    num_classes: int
    families: tuple[str, ...]
    models_per_family: int = 64
    backdoored_fraction: float = 0.5
    trigger_kinds: tuple[str, ...] = TRIGGER_KINDS
    attacks: AttackRanges = AttackRanges()
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)
    train_images: int = 3000
    eval_images: int = 1000
    training: TrainingSettings = TrainingSettings()
    preprocessings: tuple[Preprocessing, ...] = DEFAULT_PREPROCESSINGS
    min_attack_success: float = 0.9
    max_accuracy_gap: float = 0.05
    group_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES and f != OWN_ARCHITECTURE]
        if not self.families or unknown:
            raise OptionError(f"unknown architecture families {unknown or 'none given'} "
                              f"(known: {', '.join(FAMILIES)}, {OWN_ARCHITECTURE}).")
        kinds = [k for k in self.trigger_kinds if k not in TRIGGER_KINDS]
        if not self.trigger_kinds or kinds:
            raise OptionError(f"unknown trigger kinds {kinds or 'none given'} (known: {', '.join(TRIGGER_KINDS)}).")
        if self.models_per_family < 1 or self.group_size < 1:
            raise OptionError("a zoo needs at least one model per family and a group size of at least 1.")
        if not 0 <= self.backdoored_fraction <= 1 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-9:
            raise OptionError("the backdoored fraction must lie in [0, 1] and the split fractions must add up to 1.")
        if self.train_images < self.training.batch_size or self.eval_images < 1:
            raise OptionError(f"a zoo needs at least one mini-batch ({self.training.batch_size}) of training images "
                              "and at least one evaluation image.")
        if self.training.epochs < 1 or self.num_classes < 2:
            raise OptionError("a zoo needs at least one epoch and two classes.")
        if self.training.optimizer not in OPTIMIZERS:
            raise OptionError(f"unknown optimiser '{self.training.optimizer}' (known: {', '.join(OPTIMIZERS)}).")
        if self.training.weight_decay < 0:
            raise OptionError(f"weight decay must be 0 or more, got {self.training.weight_decay:g}.")

    def to_json(self) -> dict:
        content = json.loads(json.dumps(dataclasses.asdict(self)))
        # The optimiser settings came later: a zoo trained with the defaults (Adam, no weight decay) leaves them out,
        # so its cache key and every provenance that quotes it stay what they were.
        for name, default in (("optimizer", "adam"), ("weight_decay", 0.0)):
            if content["training"][name] == default:
                del content["training"][name]
        return content


@dataclass(frozen=True)
class Candidate:
    """One planned zoo model; ``attack`` is None for a clean one."""

    index: int
    family: str
    split: str
    preprocessing: Preprocessing
    init_seed: int
    order_seed: int
    attack: Attack | None = field(default=None, compare=False)

    @property
    def backdoored(self) -> bool:
        return self.attack is not None


def plan_candidates(spec: ZooSpec) -> list[Candidate]:
    """All candidates of the zoo, family by family, in index order."""
    slots = []  # (index, family, split, backdoored)
    index = 0
    for family_number, family in enumerate(spec.families):
        rng = np.random.default_rng([spec.seed, 1, family_number])
        splits = _split_names(spec.models_per_family, spec.splits, rng)
        for split in SPLITS:
            members = [i for i, name in enumerate(splits) if name == split]
            for position, member in enumerate(members):
                # Interleaved exactly: the fraction holds in every (family, split) group, not only on average.
                backdoored = (int((position + 1) * spec.backdoored_fraction)
                              > int(position * spec.backdoored_fraction))
                slots.append((index + member, family, split, backdoored))
        index += spec.models_per_family
    slots.sort()
    attacks = _plan_attacks(spec, slots)
    candidates = []
    for number, family, split, _ in slots:
        rng = np.random.default_rng([spec.seed, 2, number])
        preprocessing = spec.preprocessings[int(rng.integers(len(spec.preprocessings)))]
        candidates.append(Candidate(number, family, split, preprocessing, int(rng.integers(2**31)),
                                    int(rng.integers(2**31)), attacks.get(number)))
    return candidates


def _split_names(count: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    sizes = [int(round(f * count)) for f in fractions[:2]]
    sizes.append(count - sum(sizes))
    names = [name for name, size in zip(SPLITS, sizes, strict=True) for _ in range(max(size, 0))][:count]
    return [names[i] for i in rng.permutation(len(names))]


def _plan_attacks(spec: ZooSpec, slots: list[tuple[int, str, str, bool]]) -> dict[int, Attack]:
    """Attacks of the backdoored candidates: training split first, whose patterns the others must avoid."""
    attacks: dict[int, Attack] = {}
    seen: set[str] = set()
    turns = dict.fromkeys(SPLITS, 0)  # kinds alternate within each split, so each split has them all
    for number, _, split, _ in sorted((s for s in slots if s[3]), key=lambda s: (SPLITS.index(s[2]), s[0])):
        kind = spec.trigger_kinds[turns[split] % len(spec.trigger_kinds)]
        turns[split] += 1
        rng = np.random.default_rng([spec.seed, 3, number])
        for _ in range(_MAX_PATTERN_DRAWS):
            attack = sample_attack(rng, kind, spec.input_shape, spec.num_classes, spec.attacks)
            if split == "train" or attack.fingerprint() not in seen:
                break
        else:
            raise OptionError("the trigger ranges are too narrow to draw test patterns unseen in training.")
        if split == "train":
            seen.add(attack.fingerprint())
        attacks[number] = attack
    return attacks
