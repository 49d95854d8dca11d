"""The GoodNet: G(x) = f'(x) unless it flags x, then class N ("poisoned").

Two rules for flagging. ``disagree`` (the seed's): the original f and the repaired f' disagree. It raises a false
alarm on every clean input where repair changed the answer (3 % of MNIST digits after fine-pruning). ``targets``
(the default when detection suspects target classes): they disagree *and* the original answers a suspected target
class. A trigger sends inputs to its target, so triggered inputs still meet the condition, while clean inputs that
merely moved between two innocent classes no longer raise an alarm. With a ``confidence`` floor the original must
also give its answer at least that probability: a trigger drives the original to its target with near certainty,
while the clean inputs whose answer unlearning changed are mostly those the original was unsure about. The floor is
calibrated on decision data without poisoned inputs (:func:`calibrate_confidence`).

:class:`GoodNet` is a torch module over two canonical models; its ONNX export holds both networks in
one file and returns ``scores`` (N x (classes + 1), whose argmax is G(x)) and ``label`` (G(x)).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from worker.engine.canonical import CanonicalModel
from worker.engine.formats.onnx_export import export_module


def _probabilities(output: Tensor, softmaxed: bool) -> Tensor:
    return output if softmaxed else torch.softmax(output, dim=1)


class GoodNet(nn.Module):
    def __init__(self, original: CanonicalModel, repaired: CanonicalModel, targets: list[int] | None = None,
                 confidence: float = 0.0) -> None:
        """``targets``: the suspected target classes (the ``targets`` rule); None or empty: the seed's rule.
        ``confidence``: the probability the original must give its answer for a disagreement to count."""
        super().__init__()
        self.original, self.repaired = original, repaired
        self.num_classes = original.signature.num_classes
        self.original_gives_probabilities = original.signature.output_activation == "softmax"
        self.repaired_gives_probabilities = repaired.signature.output_activation == "softmax"
        self.confidence = confidence
        self.targets = sorted(set(targets or []))
        suspect = torch.zeros(self.num_classes) if self.targets else torch.ones(self.num_classes)
        suspect[self.targets] = 1
        # A constant table looked up by the original's answer (an ONNX Gather): 1 where a disagreement counts.
        self.register_buffer("suspect", suspect.to(next(repaired.parameters()).device))
        self.eval()

    @property
    def rule(self) -> str:
        return "targets" if self.targets else "disagree"

    def disagreements(self, original: Tensor, predicted: Tensor) -> tuple[Tensor, Tensor]:
        """From the original's output and the repaired model's answers: where the rule counts a disagreement before
        the confidence floor, and the probability the original gives its own answer."""
        first = original.argmax(1)
        sure = _probabilities(original, self.original_gives_probabilities).max(1).values
        return (first != predicted) & (self.suspect[first] > 0), sure

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        original, repaired = self.original(x), self.repaired(x)
        predicted = repaired.argmax(1)
        flagged, sure = self.disagreements(original, predicted)
        if self.confidence > 0:
            flagged = flagged & (sure >= self.confidence)
        probabilities = _probabilities(repaired, self.repaired_gives_probabilities)
        # Unflagged: the repaired model's probabilities and 0 for class N; flagged: probability 1 for class N.
        # The argmax of the scores is the label.
        weight = (~flagged).to(probabilities.dtype).unsqueeze(1)
        scores = torch.cat([probabilities * weight, 1 - weight], dim=1)
        label = torch.where(flagged, torch.full_like(predicted, self.num_classes), predicted)
        return scores, label


@dataclass(frozen=True)
class GoodNetMetrics:
    clean_accuracy: float
    false_alarm_rate: float
    attack_success_rate: float | None
    detection_rate: float | None


@torch.no_grad()
def goodnet_labels(goodnet: GoodNet, x: Tensor, batch_size: int = 1024) -> np.ndarray:
    device = next(goodnet.parameters()).device
    out = [goodnet(x[s:s + batch_size].to(device))[1].cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def evaluate_goodnet(goodnet: GoodNet, clean_x: Tensor, clean_y: Tensor, poisoned_x: Tensor | None = None,
                     poisoned_y: Tensor | None = None, batch_size: int = 1024) -> GoodNetMetrics:
    n = goodnet.num_classes
    clean = goodnet_labels(goodnet, clean_x, batch_size)
    asr = detection = None
    if poisoned_x is not None and len(poisoned_x):
        poisoned = goodnet_labels(goodnet, poisoned_x, batch_size)
        asr = float((poisoned == poisoned_y.numpy()).mean())
        detection = float((poisoned == n).mean())
    return GoodNetMetrics(clean_accuracy=float((clean == clean_y.numpy()).mean()),
                          false_alarm_rate=float((clean == n).mean()), attack_success_rate=asr,
                          detection_rate=detection)


@torch.no_grad()
def calibrate_confidence(goodnet: GoodNet, stamped: Tensor, keep: float = 0.99, cap: float = 0.99) -> float:
    """The highest confidence floor under which the GoodNet's rule still flags ``keep`` of the disagreements it counts
    without a floor among ``stamped`` (clean decision inputs stamped with the reversed triggers, in the model's input
    form), never above ``cap``: the real trigger may drive the original a little less surely than the reversed one;
    0.0 (no floor) when it counts none of them. ``goodnet.confidence`` itself plays no part."""
    device = next(goodnet.parameters()).device
    caught = []
    for s in range(0, len(stamped), 1024):
        x = stamped[s:s + 1024].to(device)
        flagged, sure = goodnet.disagreements(goodnet.original(x), goodnet.repaired(x).argmax(1))
        caught.append(sure[flagged].cpu())
    confidences = torch.cat(caught) if caught else torch.zeros(0)
    if not len(confidences):
        return 0.0
    return min(float(torch.quantile(confidences.double(), 1 - keep, interpolation="lower")), cap)


def export_goodnet_onnx(goodnet: GoodNet, path: Path, opset: int = 17) -> None:
    """One ONNX file with both networks; input ``input``, outputs ``scores`` and ``label``, dynamic batch."""
    export_module(goodnet, tuple(goodnet.original.signature.input_shape), path, ["scores", "label"], opset)
