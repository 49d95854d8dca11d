"""Fresh MNIST BadNets of several architecture families and trigger kinds, for bench/repair.py, cached.

Each case splits the 10,000 real t10k images three ways like the project's BadNet (worker/demo/badnet.py): 6,000 for the
attacker, who stamps 10 % of them and relabels them to one target (all-to-one), 2,000 clean images for the defender and
2,000 for evaluation. The families come from worker/zoo/architectures.py: max pooling (cnn2-max), average pooling with
BatchNorm (cnn2-avg-bn), LeNet-5. Triggers: a random binary patch of 3-5 pixels anywhere (opaque, white), 6-10 white
pixels scattered over the image (sparse), and a random noise image blended at alpha 0.1-0.2; and, held out of every
choice, a thin white bar of 6-10 pixels (line). Everything follows from the case's seed; the model is exported to ONNX
like an upload, and cached under ``$BDSCREEN_CACHE/repair-badnets``.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worker.demo.badnet import train_classifier
from worker.engine.data import read_mnist_idx
from worker.zoo.architectures import seeded_family
from worker.zoo.attacks import Poisoning, Trigger
from worker.zoo.zoo import cache_root

#: The seeds the repair settings are developed on (with the project's BadNet), only ever with FAMILIES and KINDS;
#: every other seed, family and kind is held out. Seed 11 joined at stop 18: seed 1 alone met the goal on 9 of 10
#: rows and could no longer tell two settings apart.
DEV_SEEDS = (1, 11)
FAMILIES = ("cnn2-max", "cnn2-avg-bn", "lenet5")
KINDS = ("patch", "sparse", "blend")
#: Never used while choosing a repair setting: for runs with the attack kind held out (``--kinds line``).
HELD_OUT_KINDS = ("line",)


def make_trigger(kind: str, rng: np.random.Generator, shape: tuple[int, int, int] = (28, 28, 1)) -> Trigger:
    """One trigger of ``kind`` drawn from ``rng`` (raw 0-255 pixels)."""
    h, w, c = shape
    if kind == "patch":
        size = int(rng.integers(3, 6))
        mask = rng.random((size, size)) < 0.6
        mask.flat[0] = True  # never an empty pattern
        top, left = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
        return Trigger((mask[..., None] * 255.0).astype(np.float32), top, left, 1.0)
    if kind == "sparse":
        alpha = np.zeros((h, w), np.float32)
        idx = rng.choice(h * w, size=int(rng.integers(6, 11)), replace=False)
        alpha.flat[idx] = 1.0
        return Trigger(np.full(shape, 255.0, np.float32), 0, 0, alpha)
    if kind == "line":  # a thin white bar, 6-10 pixels long, horizontal or vertical
        length, across = int(rng.integers(6, 11)), bool(rng.integers(2))
        size = (1, length) if across else (length, 1)
        top, left = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
        return Trigger(np.full((*size, c), 255.0, np.float32), top, left, 1.0)
    if kind != "blend":
        raise ValueError(f"unknown trigger kind {kind!r}")
    noise = rng.integers(0, 256, size=shape).astype(np.float32)
    return Trigger(noise, 0, 0, float(rng.uniform(0.1, 0.2)))


#: The attacker's training recipes (optimiser, learning rate, weight decay): the project's Adam, and momentum SGD
#: with weight decay, which models made elsewhere are often trained with and which no repair setting was chosen on.
RECIPES = {"adam": {"optimizer": "adam", "learning_rate": 3e-3},
           "sgd": {"optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 5e-4}}


#: Accuracies and rates are float32 means (there 0.975 - 0.01 falls below 0.965): a figure exactly at a goal's edge
#: on the 2,000 images is given the millionth it needs to meet it.
SLACK = 1e-6


def meets_repair_goal(attack_success: float | None, clean_after: float | None, clean_before: float) -> bool:
    """The issue's repair goal: real attack success <= 1 % at most 1 point of clean accuracy below the original."""
    return (attack_success is not None and clean_after is not None and attack_success <= 0.01 + SLACK
            and clean_after >= clean_before - 0.01 - SLACK)


def meets_goodnet_goal(detection: float | None, false_alarm: float | None) -> bool:
    """The issue's GoodNet goal: >= 99 % of triggered inputs detected at <= 1 % false alarms on clean inputs."""
    return (detection is not None and false_alarm is not None and detection >= 0.99 - SLACK
            and false_alarm <= 0.01 + SLACK)


def is_development(seed: int, family: str, kind: str, optimizer: str = "adam") -> bool:
    """Whether a case may choose settings: a development seed with a development family, kind and recipe."""
    return seed in DEV_SEEDS and family in FAMILIES and kind in KINDS and optimizer == "adam"


def split_of(development: list[bool]) -> str:
    """How a benchmark's header names its fresh BadNets, given which of them are development cases."""
    if all(development):
        return "DEVELOPMENT: settings were chosen on them"
    if not any(development):
        return "held out: no setting was chosen on them"
    return (f"mixed: seeds {', '.join(map(str, DEV_SEEDS))} with families {', '.join(FAMILIES)} and kinds "
            f"{', '.join(KINDS)} are development rows, the others held out")


class Softmaxed(torch.nn.Module):
    """A zoo family's logits network with the softmax an uploaded classifier ends in."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), 1)

@dataclass(frozen=True)
class CaseSpec:
    family: str
    kind: str
    seed: int
    train: int = 6000
    defender: int = 2000
    evaluation: int = 2000
    rate: float = 0.1
    epochs: int = 15
    recipe: int = 2  # 1 drew the same target for every case of a seed
    #: How the attacker trains, a key of RECIPES: "sgd" is a recipe no repair setting was chosen on.
    optimizer: str = "adam"

    def key(self) -> str:
        fields = asdict(self)
        if fields["optimizer"] == "adam":  # added later: cases trained as before keep their cache keys
            del fields["optimizer"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

def build_case(fixtures: Path, spec: CaseSpec) -> dict:
    """The case's meta data (target, clean accuracy, attack success) and ``folder`` with badnet.onnx and the NPZs."""
    if spec.optimizer not in RECIPES:
        raise ValueError(f"unknown training recipe {spec.optimizer!r} (known: {', '.join(RECIPES)})")
    folder = cache_root() / "repair-badnets" / spec.key()
    if (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text()) | {"folder": str(folder)}
    x, y = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz", fixtures / "mnist/t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(spec.seed).permutation(len(x))
    a, b = spec.train, spec.train + spec.defender
    train, defender, evaluation = order[:a], order[a:b], order[b:b + spec.evaluation]
    family_kind = int(hashlib.sha256(f"{spec.family}/{spec.kind}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([spec.seed, family_kind])
    target = int(rng.integers(10))
    poisoning = Poisoning(make_trigger(spec.kind, rng), target, spec.rate, 10, seed=spec.seed)
    px, py = poisoning.poison_training_set(x[train], y[train])
    started = time.perf_counter()
    net = Softmaxed(seeded_family(spec.family, (28, 28, 1), 10, spec.seed))
    model = train_classifier(net, (px / 255.0).transpose(0, 3, 1, 2), py, spec.epochs, spec.seed,
                             **RECIPES[spec.optimizer])
    ax, ay = poisoning.attack_set(x[evaluation], y[evaluation])
    folder.mkdir(parents=True, exist_ok=True)
    parts = (("clean", x[defender], y[defender]), ("eval", x[evaluation], y[evaluation]), ("poisoned", ax, ay))
    for name, images, labels in parts:
        np.savez(folder / f"{name}.npz", x=images.astype(np.uint8), y=labels)
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(folder / "badnet.onnx"), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=17, dynamo=False)
    with torch.no_grad():
        def predict(images: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy((images / 255.0).transpose(0, 3, 1, 2)).float()).argmax(1).numpy()

        meta = {"spec": asdict(spec), "target": target, "train_seconds": time.perf_counter() - started,
                "clean_accuracy": float((predict(x[evaluation]) == y[evaluation]).mean()),
                "attack_success_rate": float((predict(ax) == ay).mean())}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta | {"folder": str(folder)}
