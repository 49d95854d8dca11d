"""export_onnx and run_onnx: canonical -> ONNX -> onnxruntime gives the canonical outputs, at any batch size."""

import pathlib
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from schemas.models import InputLayout
from worker.engine.canonical import CanonicalModel
from worker.engine.formats.onnx_export import export_onnx, onnx_session, run_onnx
from worker.engine.formats.onnx_reader import read_onnx

TOLERANCE = 1e-5


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1, stride=1)
        self.norm = nn.BatchNorm2d(8)
        self.conv_c = nn.Conv2d(8, 6, 3, stride=2, padding=(0, 1))
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(torch.relu(torch.cat([self.conv_a(x), self.conv_b(x)], 1)))
        y = F.max_pool2d(F.pad(y, (0, 1, 1, 0)), 2, ceil_mode=True)
        y = F.interpolate(y, scale_factor=2, mode="nearest") * torch.sigmoid(y[:, :, :1, :1])
        y = F.avg_pool2d(self.conv_c(y), 2, padding=1, count_include_pad=False)
        return torch.softmax(self.fc(y.reshape(y.size(0), -1)), 1)


def canonical_from_torch(tmp_path: pathlib.Path) -> CanonicalModel:
    torch.manual_seed(0)
    source = SmallNet().eval()
    path = tmp_path / "source.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(source, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["scores"],
                          dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})
    return read_onnx(path)


def canonical_channels_last(tmp_path: pathlib.Path) -> CanonicalModel:
    """A tf2onnx-style model: NHWC input transposed for a Conv, uneven 'same' pooling, a dense head."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], name="conv", kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["a"], name="avg", kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "m"], ["y"], name="dense")]
    initializers = [numpy_helper.from_array((0.3 * rng.standard_normal((4, 3, 3, 3))).astype(np.float32), "w"),
                    numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"),
                    numpy_helper.from_array((0.3 * rng.standard_normal((4, 3))).astype(np.float32), "m")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], initializers)
    path = tmp_path / "channels_last.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return read_onnx(path)


def canonical_outputs(model: CanonicalModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("build", [canonical_from_torch, canonical_channels_last])
def test_round_trip_matches_canonical_at_any_batch_size(tmp_path, build, opset):
    model = build(tmp_path)
    path = tmp_path / "exported.onnx"
    export_onnx(model, path, opset=opset)
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["output"]
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch, *model.signature.input_shape)).astype(np.float32)
        expected = canonical_outputs(model, x)
        np.testing.assert_allclose(run_onnx(session, x), expected, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(run_onnx(path, x, batch_size=3), expected, atol=TOLERANCE, rtol=0)
    # What bdscreen writes, bdscreen reads back: same signature, same outputs.
    reread = read_onnx(path)
    assert reread.signature.input_shape == model.signature.input_shape
    assert reread.signature.input_layout == model.signature.input_layout
    assert reread.signature.output_activation == model.signature.output_activation
    x = np.random.default_rng(9).standard_normal((4, *model.signature.input_shape)).astype(np.float32)
    np.testing.assert_allclose(canonical_outputs(reread, x), canonical_outputs(model, x), atol=TOLERANCE, rtol=0)


def test_export_writes_one_file_and_leaves_the_model_alone(tmp_path):
    model = canonical_channels_last(tmp_path)
    assert model.signature.input_layout == InputLayout.nhwc
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    export_onnx(model, out_dir / "model.onnx")
    assert [p.name for p in out_dir.iterdir()] == ["model.onnx"]
    assert not model.training and not any(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    loaded = onnx.load(str(out_dir / "model.onnx"))
    assert all(t.data_location != TensorProto.EXTERNAL for t in loaded.graph.initializer)
    assert loaded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_run_onnx_on_no_samples(tmp_path):
    model = canonical_channels_last(tmp_path)
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    assert run_onnx(path, np.zeros((0, 5, 5, 3), np.float32)).shape == (0, 3)
