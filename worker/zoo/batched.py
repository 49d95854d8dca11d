"""Training many small models of one architecture at once, and the one-after-another baseline.

Batched training stacks the K models' parameters (``torch.func.stack_module_state``) and runs them as one
network per step (grouped convolutions for the built-in families, ``vmap(functional_call)`` for any other
module, such as an uploaded model's own graph): each model gets its own mini-batch (its own shuffle, its own
trigger and poisoned labels, its own preprocessing), the K losses are summed, so each model's gradient is exactly
its own, and one optimiser step updates all of them (Adam and SGD with momentum and weight decay are element-wise,
so a stacked optimiser is K independent ones).
:func:`train_sequential` runs the same steps on the same mini-batches model by model; both return the same
weights up to floating-point summation order. BatchNorm's running statistics are stacked buffers updated in place.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from schemas.models import InputLayout
from worker.core.errors import OptionError
from worker.engine.canonical import default_device
from worker.engine.preprocess import Preprocessing, channel_values, to_layout
from worker.zoo.grouped import groupable, grouped_forward

#: seed -> a freshly initialised module returning logits.
Builder = Callable[[int], nn.Module]


#: The optimisers a zoo can be trained with. Models made elsewhere come from other recipes than the project's Adam:
#: a zoo trained with another one measures how far the detectors' calibration carries over.
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainingSettings:
    """What every model of a zoo shares: passes over the data, mini-batch size, the optimiser and its settings."""

    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-3
    optimizer: str = "adam"  # or "sgd" (momentum SGD_MOMENTUM)
    weight_decay: float = 0.0

    def optimizer_for(self, params) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
        return make_optimizer(params, self.optimizer, self.learning_rate, self.weight_decay)


def make_optimizer(params, name: str, learning_rate: float,  # type: ignore[no-untyped-def]
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """One of ``OPTIMIZERS`` over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
    raise OptionError(f"unknown optimiser '{name}' (known: {', '.join(OPTIMIZERS)}).")


@dataclass(frozen=True)
class TrainingJob:
    """One model to train: seeds, preprocessing, and its poisoned view of the shared training images.

    ``labels`` are its training labels (poisoned ones relabelled); ``stamped`` marks the images that carry its
    trigger, given as an image-sized ``pattern`` (H x W x C) and ``alpha`` map (H x W x 1); a clean model has
    no pattern and stamps nothing.
    """

    init_seed: int
    order_seed: int
    preprocessing: Preprocessing
    labels: np.ndarray
    stamped: np.ndarray
    pattern: np.ndarray | None = None
    alpha: np.ndarray | None = None


class _JobTensors:
    """The jobs' per-model data stacked on the device, and the mini-batch each model sees at each step."""

    def __init__(self, jobs: list[TrainingJob], images: Tensor, settings: TrainingSettings) -> None:
        count, channels = len(images), images.shape[-1]
        device = images.device
        if settings.batch_size < 1 or settings.batch_size > count:
            raise OptionError(f"batch size must be between 1 and the {count} training images.")
        for job in jobs:
            if job.labels.shape != (count,) or job.stamped.shape != (count,):
                raise ValueError("every job needs one label and one stamp flag per training image")
        self.images = images
        self.labels = torch.as_tensor(np.stack([j.labels for j in jobs]), dtype=torch.long, device=device)
        self.stamped = torch.as_tensor(np.stack([j.stamped for j in jobs]), dtype=images.dtype, device=device)
        no_pattern = np.zeros(tuple(images.shape[1:]), np.float32)
        no_alpha = np.zeros((*images.shape[1:3], 1), np.float32)
        self.pattern = torch.as_tensor(np.stack([no_pattern if j.pattern is None else j.pattern for j in jobs]),
                                       dtype=images.dtype, device=device)
        self.alpha = torch.as_tensor(np.stack([no_alpha if j.alpha is None else j.alpha for j in jobs]),
                                     dtype=images.dtype, device=device)

        def stacked(values: list[tuple[float, ...]]) -> Tensor:
            return torch.tensor(values, dtype=images.dtype, device=device).reshape(len(jobs), 1, 1, 1, channels)

        self.divide = torch.tensor([j.preprocessing.divide_by for j in jobs], dtype=images.dtype,
                                   device=device).reshape(-1, 1, 1, 1, 1)
        self.mean = stacked([channel_values("mean", j.preprocessing.mean, channels) for j in jobs])
        self.std = stacked([channel_values("std", j.preprocessing.std, channels) for j in jobs])
        self.bgr = torch.tensor([j.preprocessing.bgr for j in jobs], device=device).reshape(-1, 1, 1, 1, 1)
        self.steps = count // settings.batch_size  # the last incomplete mini-batch of an epoch is dropped
        self.orders = [_order(job.order_seed, count, settings) for job in jobs]
        self.batch_size = settings.batch_size

    def batch(self, models: slice, epoch: int, step: int, layout: InputLayout) -> tuple[Tensor, Tensor]:
        """Inputs (K x B x model layout) and labels (K x B) of ``models`` at ``step`` of ``epoch``."""
        start = step * self.batch_size
        index = torch.as_tensor(np.stack([order[epoch][start:start + self.batch_size]
                                          for order in self.orders[models]]), device=self.images.device)
        x = self.images[index]  # K x B x H x W x C
        alpha = self.alpha[models, None] * self.stamped[models].gather(1, index)[..., None, None, None]
        x = (1 - alpha) * x + alpha * self.pattern[models, None]
        x = torch.where(self.bgr[models], x.flip(-1), x)
        x = (x / self.divide[models] - self.mean[models]) / self.std[models]
        models_, batch = x.shape[:2]
        x = to_layout(x.reshape(models_ * batch, *x.shape[2:]), layout)
        return x.reshape(models_, batch, *x.shape[1:]).contiguous(), self.labels[models].gather(1, index)


def _order(seed: int, count: int, settings: TrainingSettings) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(count) for _ in range(settings.epochs)]


def train_batched(build: Builder, jobs: list[TrainingJob], images: np.ndarray, settings: TrainingSettings,
                  layout: InputLayout, device: torch.device | None = None, engine: str = "auto") -> list[nn.Module]:
    """Train one model per job, all at once; returns them (on the CPU) in job order.

    ``engine`` 'grouped' (:mod:`worker.zoo.grouped`, the built-in families) or 'vmap' (any module); 'auto'
    takes 'grouped' where it applies.
    """
    device = device or default_device()
    modules = [build(job.init_seed).to(device) for job in jobs]
    data = _JobTensors(jobs, torch.as_tensor(images, dtype=torch.float32, device=device), settings)
    params, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0]).to("meta")
    base.train()
    if engine == "auto":
        engine = "grouped" if layout == InputLayout.nchw and groupable(base) else "vmap"
    if engine == "grouped":
        if layout != InputLayout.nchw or not groupable(base):
            raise OptionError("the grouped engine trains NCHW nn.Sequential CNNs only; use 'vmap'.")

        def losses_of(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            logits = grouped_forward(base, p, b, x)
            per_sample = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            return per_sample.reshape(y.shape).mean(1)
    elif engine == "vmap":
        def loss_of(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

        losses_of = vmap(loss_of)
    else:
        raise OptionError(f"unknown training engine '{engine}' (known: auto, grouped, vmap).")
    optimizer = settings.optimizer_for(params.values())
    everyone = slice(0, len(jobs))
    for epoch in range(settings.epochs):
        for step in range(data.steps):
            x, y = data.batch(everyone, epoch, step, layout)
            optimizer.zero_grad(set_to_none=True)
            losses_of(params, buffers, x, y).sum().backward()
            optimizer.step()
    with torch.no_grad():
        for k, module in enumerate(modules):
            module.load_state_dict({name: value[k] for name, value in (params | buffers).items()})
    return [module.cpu().eval() for module in modules]


def train_sequential(build: Builder, jobs: list[TrainingJob], images: np.ndarray, settings: TrainingSettings,
                     layout: InputLayout, device: torch.device | None = None) -> list[nn.Module]:
    """The baseline: the same training, one model after another."""
    device = device or default_device()
    data = _JobTensors(jobs, torch.as_tensor(images, dtype=torch.float32, device=device), settings)
    trained = []
    for k, job in enumerate(jobs):
        module = build(job.init_seed).to(device)
        module.train()
        optimizer = settings.optimizer_for(module.parameters())
        for epoch in range(settings.epochs):
            for step in range(data.steps):
                x, y = data.batch(slice(k, k + 1), epoch, step, layout)
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(module(x[0]), y[0]).backward()
                optimizer.step()
        trained.append(module.cpu().eval())
    return trained
