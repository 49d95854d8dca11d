"""Architecture traits: what a model is, read the same from a zoo module and from an upload read back."""

from pathlib import Path

import pytest
import torch
from torch import nn

from worker.engine.architecture import architecture_of, unlike
from worker.engine.formats import read_model
from worker.zoo.architectures import build_family

RELU_CNN = {"convolutional": True, "activations": ["relu"]}


def _onnx_copy(module: nn.Module, path: Path) -> nn.Module:
    wrapped = nn.Sequential(module, nn.Softmax(dim=1)).eval()
    torch.onnx.export(wrapped, torch.zeros(1, 1, 28, 28), path, input_names=["image"], output_names=["scores"],
                      dynamo=False)
    return read_model(path)


@pytest.mark.parametrize(("family", "expected"), [
    ("cnn2-max", RELU_CNN), ("cnn1-bn", RELU_CNN), ("lenet-tanh", {"convolutional": True, "activations": ["tanh"]}),
    ("mlp", {"convolutional": False, "activations": ["relu"]}),
])
def test_a_zoo_family_and_its_onnx_upload_have_the_same_traits(family: str, expected: dict, tmp_path: Path) -> None:
    module = build_family(family, (28, 28, 1), 10)
    assert architecture_of(module) == expected
    assert architecture_of(_onnx_copy(module, tmp_path / "m.onnx")) == expected  # the softmax is not hidden


def test_a_keras_upload_with_fused_activations_is_read(fixtures: Path) -> None:
    assert architecture_of(read_model(fixtures / "mnist" / "csaw_c_clean_label_bd_net.h5")) == RELU_CNN


def test_a_capped_relu_counts_as_its_own_nonlinearity() -> None:
    assert architecture_of(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU6()))["activations"] == ["relu6"]


@pytest.mark.parametrize(("model", "why"), [
    (RELU_CNN, None),
    ({"convolutional": True, "activations": []}, None),  # fewer non-linearities than the zoo's is still like it
    ({"convolutional": False, "activations": ["relu"]},
     "it has no convolutions (a dense network) and they all convolve"),
    ({"convolutional": True, "activations": ["relu", "tanh"]}, "it uses the non-linearities relu, tanh and they use "
                                                               "only relu"),
])
def test_a_model_is_unlike_the_zoo_when_it_convolves_otherwise_or_uses_another_nonlinearity(model, why) -> None:
    assert unlike(model, [RELU_CNN]) == why
