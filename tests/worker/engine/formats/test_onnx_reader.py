"""read_onnx on models exported by torch: outputs match torch and onnxruntime, layers keep names and weights."""

import pathlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from schemas.models import InputLayout
from worker.engine import ops
from worker.engine.formats.onnx_reader import read_onnx

TOLERANCE = 1e-5


class ConvNet(nn.Module):
    """Strides, padding, dilation, groups, BatchNorm, max/avg pooling both ways, global pooling, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(8)  # after a ReLU, so that the exporter cannot fold it into the conv
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.avg_without_pad = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.avg_with_pad = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.avg_without_pad(x) + self.avg_with_pad(x)
        return torch.softmax(self.fc(torch.flatten(self.gap(x), 1)), dim=1)


class BranchNet(nn.Module):
    """Concat of two branches, Add, Mul, Pad, nearest Upsample, LeakyReLU, Sigmoid, Tanh, Dropout, view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv_c = nn.Conv2d(8, 6, 3, stride=2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 8 * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.leaky_relu(self.conv_a(x), 0.1), torch.sigmoid(self.conv_b(x))], dim=1)
        y = y * torch.tanh(y) + y
        y = self.conv_c(self.up(F.pad(y, (1, 2, 0, 1))))
        y = self.drop(y)
        return self.fc(y.view(y.size(0), -1))


class ActivationNet(nn.Module):
    """Resize to a size, PReLU, the hard/smooth activations, Clip, strided slicing, ReduceMean, bilinear."""

    def __init__(self) -> None:
        super().__init__()
        self.prelu = nn.PReLU(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.prelu(F.interpolate(x, size=(16, 16), mode="nearest"))
        y = F.hardsigmoid(y) + F.hardswish(y) + F.elu(y, 0.5) + F.selu(y) + F.softplus(y) + F.relu6(y)
        y = y + torch.clamp(y, -1, 1) + F.interpolate(y, scale_factor=2, mode="bilinear")[:, :, ::2, ::2]
        return y[:, :, 1:, ::2].mean((2, 3))


class CeilPoolNet(nn.Module):
    """Ceil-mode pooling whose last window would start in the padding (ONNX drops it, as torch does)."""

    def __init__(self) -> None:
        super().__init__()
        self.max = nn.MaxPool2d(2, 2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avg(self.max(x)), 1))


class MlpNet(nn.Module):
    """Flat input, Linear, BatchNorm1d, Dropout, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(20, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.fc2(F.dropout(torch.relu(self.norm(self.fc1(x))), training=self.training)), 1)


TORCH_MODELS = [(ConvNet, (3, 16, 16)), (BranchNet, (3, 8, 8)), (ActivationNet, (3, 8, 8)),
                (CeilPoolNet, (3, 7, 7)), (MlpNet, (20,))]


def randomized(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
            nn.init.uniform_(layer.weight, 0.5, 1.5)
            nn.init.uniform_(layer.bias, -0.5, 0.5)
    return module.eval()


def export(module: nn.Module, sample_shape: tuple[int, ...], path: pathlib.Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, *sample_shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def onnxruntime_outputs(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def canonical_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("opset", [13, 20])
@pytest.mark.parametrize(("model_class", "sample_shape"), TORCH_MODELS, ids=[m.__name__ for m, _ in TORCH_MODELS])
def test_torch_exports_match_torch_and_onnxruntime(tmp_path, model_class, sample_shape, opset):
    source = randomized(model_class())
    path = tmp_path / "model.onnx"
    export(source, sample_shape, path, opset)
    model = read_onnx(path)
    x = np.random.default_rng(1).standard_normal((6, *sample_shape)).astype(np.float32)
    expected = canonical_outputs(source, x)
    actual = canonical_outputs(model, x)
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(actual, onnxruntime_outputs(path, x), atol=TOLERANCE, rtol=0)
    assert (actual.argmax(1) == expected.argmax(1)).all()
    node_names = {node.name for node in onnx.load(str(path)).graph.node}
    assert {n.name for n in model.nodes[1:]} <= node_names
    assert model.nodes[0].name == "input" and model.signature.input_shape == list(sample_shape)
    assert model.signature.producer.endswith(f"opset {opset}")


def test_layers_keep_weights_and_names(tmp_path):
    source = randomized(ConvNet())
    path = tmp_path / "model.onnx"
    export(source, (3, 16, 16), path, 17)
    model = read_onnx(path)
    conv = model.layer("/conv2/Conv")
    assert isinstance(conv, ops.Conv2d) and conv.out_channels == 8 and conv.groups == 2
    torch.testing.assert_close(conv.weight, source.conv2.weight, rtol=0, atol=0)
    assert isinstance(model.layer("/fc/Gemm"), ops.Linear)
    assert isinstance(model.layer("/norm/BatchNormalization"), nn.BatchNorm2d)
    assert model.signature.output_activation == "softmax"
    assert model.signature.input_layout == InputLayout.nchw and model.signature.num_classes == 5
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(torch.softmax(model.logits(x), 1), model(x))
