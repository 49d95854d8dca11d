"""Generating a model zoo: train the planned candidates in batches, judge them, filter them, cache them.

Zoos are cached outside the repository under ``$BDSCREEN_CACHE/zoos`` (default ``~/.cache/bdscreen/zoos``), in a
folder named by a hash of the spec, the data and (for the ``own`` family) the uploaded model's weights. Each
training group is written as soon as it is done, so an interrupted generation resumes where it stopped. Cache
files are HDF5 written by bdscreen itself: weights and JSON records, no pickles.
"""

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from schemas.models import InputLayout
from worker.core.errors import DataError, OptionError
from worker.engine.canonical import CanonicalModel
from worker.engine.preprocess import Preprocessing, image_shape_of, model_input
from worker.zoo.architectures import OWN_ARCHITECTURE, member_layout, reinitialised_copy, seeded_family
from worker.zoo.attack_sampling import full_image_stamp
from worker.zoo.batched import Builder, TrainingJob, train_batched
from worker.zoo.zoo_spec import SPLITS, Candidate, ZooSpec, plan_candidates

ZOO_FORMAT = 2
Progress = Callable[[str], None]
Trainer = Callable[..., list[nn.Module]]


def cache_root() -> Path:
    """Where bdscreen caches what it can rebuild: ``$BDSCREEN_CACHE``, else ``~/.cache/bdscreen``."""
    return Path(os.environ.get("BDSCREEN_CACHE") or Path.home() / ".cache" / "bdscreen")


@dataclass
class ModelRecord:
    """One trained candidate: what it is and how it did (accuracies are fractions of the evaluation images)."""

    index: int
    family: str
    split: str
    backdoored: bool
    preprocessing: Preprocessing
    attack: dict | None
    clean_accuracy: float
    attack_success: float | None
    kept: bool = True
    rejected_because: str | None = None

    def to_json(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k not in ("kept", "rejected_because")}
        fields["preprocessing"] = vars(self.preprocessing)
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> "ModelRecord":
        fields = json.loads(text)
        pre = fields.pop("preprocessing")
        return cls(preprocessing=Preprocessing(pre["divide_by"], tuple(pre["mean"]), tuple(pre["std"]), pre["bgr"]),
                   **fields)


@dataclass
class ZooMember:
    """A model as ULP sees it: a module returning logits, the layout and preprocessing it takes, its label."""

    module: nn.Module
    layout: InputLayout
    preprocessing: Preprocessing
    backdoored: bool
    record: ModelRecord | None = None


@dataclass
class Zoo:
    spec: ZooSpec
    key: str
    records: list[ModelRecord]
    modules: list[nn.Module]

    def members(self, splits: tuple[str, ...] | None = None, families: tuple[str, ...] | None = None,
                kinds: tuple[str, ...] | None = None, clean: bool = True) -> list[ZooMember]:
        """Kept models in the given splits and families; backdoored ones only with ``kinds`` of trigger."""
        chosen = []
        for record, module in zip(self.records, self.modules, strict=True):
            if not record.kept or (splits and record.split not in splits):
                continue
            if families and record.family not in families:
                continue
            if record.backdoored and kinds and record.attack["kind"] not in kinds:
                continue
            if not record.backdoored and not clean:
                continue
            chosen.append(ZooMember(module, member_layout(module), record.preprocessing, record.backdoored, record))
        return chosen

    def summary(self) -> dict:
        """Counts of kept models per split and kind, and of rejected ones (for a bank's provenance)."""
        kept: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            members = [r for r in self.records if r.kept and r.split == split]
            kept[split] = {"clean": sum(not r.backdoored for r in members),
                           **{kind: sum(r.backdoored and r.attack["kind"] == kind for r in members)
                              for kind in self.spec.trigger_kinds}}
        return {"zoo_key": self.key, "candidates": len(self.records),
                "rejected": sum(not r.kept for r in self.records), "kept": kept}


def judge(records: list[ModelRecord], min_attack_success: float, max_accuracy_gap: float) -> None:
    """Mark which models stay: attacks that work, and accuracy near the clean models' of the same family."""
    for family in {r.family for r in records}:
        clean = [r.clean_accuracy for r in records if r.family == family and not r.backdoored]
        reference = float(np.mean(clean)) if clean else None
        for record in (r for r in records if r.family == family):
            record.kept, record.rejected_because = True, None
            if record.backdoored and (record.attack_success or 0.0) < min_attack_success:
                record.kept = False
                record.rejected_because = f"attack success {record.attack_success:.3f} < {min_attack_success:.2f}"
            elif reference is not None and record.clean_accuracy < reference - max_accuracy_gap:
                record.kept = False
                record.rejected_because = (f"clean accuracy {record.clean_accuracy:.3f} is more than "
                                           f"{max_accuracy_gap * 100:g} points below the clean mean {reference:.3f}")


def generate_zoo(spec: ZooSpec, images: np.ndarray, labels: np.ndarray, *, own_model: CanonicalModel | None = None,
                 cache_dir: Path | None = None, progress: Progress | None = None,
                 trainer: Trainer = train_batched) -> Zoo:
    """Train (or read back from the cache) every candidate of ``spec`` on raw N x H x W x C images, and judge them."""
    train_x, train_y, eval_x, eval_y = _task_data(spec, images, labels)
    key = _zoo_key(spec, train_x, train_y, eval_x, eval_y, own_model)
    folder = (cache_dir or cache_root()) / "zoos" / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec.to_json(), indent=1))
    candidates = plan_candidates(spec)
    groups: list[tuple[Builder, list[Candidate], Path, str]] = []  # with what to say when training it; zoo order
    for family in spec.families:
        build = _builder(spec, family, own_model)
        members = [c for c in candidates if c.family == family]
        for start in range(0, len(members), spec.group_size):
            group = members[start:start + spec.group_size]
            groups.append((build, group, folder / f"{family}-{start // spec.group_size:03d}.h5",
                           f"training {len(group)} {family} models ({start + len(group)}/{len(members)})"))
    # Several processes may build one zoo (a benchmark screening it in shards): each trains the groups no other is
    # training, then waits for the rest, so every group is trained once and no file is written by two at once.
    pending = [i for i, (_, _, path, _) in enumerate(groups) if not path.is_file()]
    for wait in (False, True):
        for i in list(pending):
            build, group, path, training = groups[i]
            with _group_lock(path, wait) as held:
                if not held:
                    continue
                pending.remove(i)
                if path.is_file():
                    continue
                if progress:
                    progress(training)
                layout = member_layout(build(0))
                jobs = [training_job(c, train_y, spec) for c in group]
                trained = trainer(build, jobs, train_x, spec.training, layout)
                scored = [_evaluate(c, m, layout, eval_x, eval_y) for c, m in zip(group, trained, strict=True)]
                _write_group(path, scored, trained)
    records: list[ModelRecord] = []
    modules: list[nn.Module] = []
    for build, _, path, _ in groups:
        group_records, group_modules = _read_group(path, build)
        records += group_records
        modules += group_modules
    judge(records, spec.min_attack_success, spec.max_accuracy_gap)
    return Zoo(spec, key, records, modules)


def _task_data(spec: ZooSpec, images: np.ndarray,
               labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(spec.input_shape):
        raise DataError(f"the zoo's images must be N x {' x '.join(map(str, spec.input_shape))}; "
                        f"got {' x '.join(map(str, images.shape))}.")
    if len(images) < spec.train_images + spec.eval_images or len(labels) != len(images):
        raise DataError(f"the zoo needs {spec.train_images} training and {spec.eval_images} evaluation images with "
                        f"one label each; got {len(images)} images and {len(labels)} labels.")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataError(f"labels must lie in [0, {spec.num_classes}).")
    x = np.asarray(images, np.float32)
    y = np.asarray(labels, np.int64)
    return x[:spec.train_images], y[:spec.train_images], x[-spec.eval_images:], y[-spec.eval_images:]


def _zoo_key(spec: ZooSpec, *arrays: np.ndarray | CanonicalModel | None) -> str:
    digest = hashlib.sha256(json.dumps({"format": ZOO_FORMAT, "spec": spec.to_json()}, sort_keys=True).encode())
    for item in arrays:
        if isinstance(item, np.ndarray):
            digest.update(repr((item.shape, item.dtype.str)).encode() + np.ascontiguousarray(item).tobytes())
        elif item is not None:  # the uploaded model: its weights and input contract decide its family
            digest.update(repr(item.signature.input_shape).encode())
            for name, value in item.state_dict().items():
                digest.update(name.encode() + value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


def _builder(spec: ZooSpec, family: str, own_model: CanonicalModel | None) -> Builder:
    if family != OWN_ARCHITECTURE:
        return lambda seed: seeded_family(family, spec.input_shape, spec.num_classes, seed)
    if own_model is None:
        raise OptionError(f"the '{OWN_ARCHITECTURE}' family re-initialises an uploaded model; give the model.")
    signature = own_model.signature
    if (image_shape_of(signature.input_shape, signature.input_layout) != tuple(spec.input_shape)
            or signature.num_classes != spec.num_classes):
        raise OptionError(f"the model takes {signature.input_shape} ({signature.input_layout}) with "
                          f"{signature.num_classes} classes, not the zoo's {spec.input_shape} with {spec.num_classes}.")
    return lambda seed: reinitialised_copy(own_model, seed)


def training_job(candidate: Candidate, labels: np.ndarray, spec: ZooSpec) -> TrainingJob:
    stamped = np.zeros(len(labels), bool)
    if candidate.attack is None:
        return TrainingJob(candidate.init_seed, candidate.order_seed, candidate.preprocessing, labels, stamped)
    poisoning = candidate.attack.poisoning
    chosen = poisoning.poisoned_indices(len(labels))
    poisoned = labels.copy()
    poisoned[chosen] = poisoning.relabel(labels[chosen])
    stamped[chosen] = True
    pattern, alpha = full_image_stamp(poisoning.trigger, spec.input_shape)
    return TrainingJob(candidate.init_seed, candidate.order_seed, candidate.preprocessing, poisoned, stamped,
                       pattern, alpha)


@torch.no_grad()
def accuracy(module: nn.Module, layout: InputLayout, preprocessing: Preprocessing, images: np.ndarray,
             labels: np.ndarray, batch_size: int = 1000) -> float:
    """Fraction of raw ``images`` that ``module`` assigns to ``labels``."""
    device = next(module.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(images[start:start + batch_size], device=device)
        predicted = module(model_input(x, preprocessing, layout)).argmax(1).cpu().numpy()
        correct += int((predicted == labels[start:start + batch_size]).sum())
    return correct / max(len(images), 1)


def _evaluate(candidate: Candidate, module: nn.Module, layout: InputLayout, images: np.ndarray,
              labels: np.ndarray) -> ModelRecord:
    clean = accuracy(module, layout, candidate.preprocessing, images, labels)
    success, attack = None, None
    if candidate.attack is not None:
        attacked_x, attacked_y = candidate.attack.poisoning.attack_set(images, labels)
        success = accuracy(module, layout, candidate.preprocessing, attacked_x, attacked_y)
        attack = candidate.attack.describe()
    return ModelRecord(candidate.index, candidate.family, candidate.split, candidate.backdoored,
                       candidate.preprocessing, attack, clean, success)


@contextmanager
def _group_lock(path: Path, wait: bool) -> Iterator[bool]:
    """Hold the lock of a group file's training; without ``wait``, yield False at once when another process holds
    it. An advisory ``flock``, released by the system if the process dies."""
    with open(path.with_suffix(".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_group(path: Path, records: list[ModelRecord], modules: list[nn.Module]) -> None:
    partial = path.with_suffix(".partial")
    with h5py.File(partial, "w") as file:
        file.attrs["format"] = ZOO_FORMAT
        for record, module in zip(records, modules, strict=True):
            group = file.create_group(f"{record.index:06d}")
            group.attrs["record"] = record.to_json()
            for name, value in module.state_dict().items():
                group.create_dataset(name, data=value.detach().cpu().numpy())
    os.replace(partial, path)  # a group file exists only when complete


def _read_group(path: Path, build: Builder) -> tuple[list[ModelRecord], list[nn.Module]]:
    records, modules = [], []
    with h5py.File(path, "r") as file:
        if file.attrs.get("format") != ZOO_FORMAT:
            raise DataError(f"{path} is not a zoo cache file of this bdscreen version; delete it to rebuild.")
        for name in sorted(file):
            group = file[name]
            module = build(0)
            module.load_state_dict({key: torch.as_tensor(np.asarray(group[key][()])) for key in group})
            records.append(ModelRecord.from_json(group.attrs["record"]))
            modules.append(module.eval())
    return records, modules
