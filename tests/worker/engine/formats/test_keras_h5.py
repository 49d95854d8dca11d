"""The Keras HDF5 reader and writer on the real fixtures and on Keras 3 files built at test time."""

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from worker.core.errors import RefusedModelError, TooLargeError, UnreadableModelError, UnsupportedLayerError
from worker.engine.formats.keras_h5 import read_keras_h5, write_keras_h5


def _reference_cases():
    index_path = Path(__file__).resolve().parents[4].parent / "shared/fixtures/reference/index.json"
    index = json.loads(index_path.read_text())
    return [name for name in index if not name.startswith("_")]


@pytest.mark.parametrize("name", _reference_cases())
def test_canonical_model_reproduces_tensorflow_softmax(name, fixtures, reference_inputs):
    entry = json.loads((fixtures / "reference/index.json").read_text())[name]
    architecture = fixtures / "ytf/deepid_architecture.json" if name == "lab3_bd_weights" else None
    model = read_keras_h5(fixtures / entry["model"], architecture)
    x = reference_inputs[entry["inputs"]] / entry["divide_by"]
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    expected = np.load(fixtures / "reference" / f"{name}.npy")
    assert out.shape == tuple(entry["shape"])
    assert np.abs(out - expected).max() <= 1e-5
    assert np.array_equal(out.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("name", _reference_cases())
def test_onnx_export_reproduces_tensorflow_softmax(name, fixtures, reference_outputs, tmp_path):
    from worker.engine.formats.onnx_export import export_onnx, run_onnx

    entry = json.loads((fixtures / "reference/index.json").read_text())[name]
    architecture = fixtures / "ytf/deepid_architecture.json" if name == "lab3_bd_weights" else None
    path = tmp_path / f"{name}.onnx"
    export_onnx(read_keras_h5(fixtures / entry["model"], architecture), path)
    x, expected = reference_outputs(name)
    out = run_onnx(path, x)
    assert np.abs(out - expected).max() <= 1e-5
    assert np.array_equal(out.argmax(1), expected.argmax(1))


def test_signature_describes_deepid(fixtures):
    sig = read_keras_h5(fixtures / "ytf/sunglasses_bd_net.h5").signature
    assert (sig.format, sig.producer, sig.input_layout) == ("keras-h5", "Keras 2.4.0", "NHWC")
    assert sig.input_shape == [55, 47, 3] and sig.num_classes == 1283 and sig.output_activation == "softmax"
    layers = {layer.name: layer for layer in sig.layers}
    assert layers["conv_3"].kind == "Conv2D" and layers["conv_3"].channels == 60
    assert layers["pool_3"].output_shape == [5, 4, 60]
    assert layers["add_9"].inputs == ["fc_1", "fc_2"]
    assert sig.parameters == sum(p.numel() for p in read_keras_h5(fixtures / "ytf/sunglasses_bd_net.h5").parameters())


def test_sequential_model_without_input_layer_gets_a_named_input(fixtures):
    model = read_keras_h5(fixtures / "mnist/csaw_c_clean_label_bd_net.h5")
    assert model.input == "conv2d_1_input"
    assert [n.name for n in model.nodes][1:4] == ["conv2d_1", "max_pooling2d_1", "conv2d_2"]
    assert model.signature.producer == "Keras 2.3.1"


def test_model_is_in_eval_mode_and_stays_there(fixtures):
    model = read_keras_h5(fixtures / "mnist/csaw_c_clean_label_bd_net.h5")
    model.train()
    assert not model.training and not any(m.training for m in model.modules())


def test_lambda_layer_is_refused_without_running_it(fixtures, tmp_path, monkeypatch):
    import marshal

    monkeypatch.setattr(marshal, "loads", lambda *a: pytest.fail("bytecode was unmarshalled"))
    with pytest.raises(RefusedModelError) as info:
        read_keras_h5(fixtures / "ytf/goodnet_with_lambda.h5")
    assert "y_reclasify" in info.value.message and "Lambda" in info.value.message and "ONNX" in info.value.message


def test_weights_only_file_needs_its_architecture(fixtures):
    with pytest.raises(UnreadableModelError, match="--architecture"):
        read_keras_h5(fixtures / "ytf/lab3_bd_weights.h5")


def test_architecture_that_does_not_match_the_weights_names_the_layer(fixtures, tmp_path):
    config = json.loads((fixtures / "ytf/deepid_architecture.json").read_text())
    config["config"]["layers"][5]["config"]["filters"] = 61  # conv_3
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(config))
    with pytest.raises(UnreadableModelError, match="conv_3.*shape"):
        read_keras_h5(fixtures / "ytf/lab3_bd_weights.h5", arch)


@pytest.mark.parametrize("drop,channels", [(2, 45), (4, 48), (10, 52)])
def test_writer_reproduces_the_published_pruned_models(fixtures, tmp_path, drop, channels, lab3_order):
    model = read_keras_h5(fixtures / "ytf/lab3_bd_weights.h5", fixtures / "ytf/deepid_architecture.json")
    conv = model.layer("conv_3")
    with torch.no_grad():
        conv.weight[lab3_order[:channels]] = 0
        conv.bias[lab3_order[:channels]] = 0
    out = tmp_path / "pruned.h5"
    changed = write_keras_h5(model, fixtures / "ytf/lab3_bd_weights.h5", out)
    assert sorted(changed) == ["/conv_3/conv_3/bias:0", "/conv_3/conv_3/kernel:0"]
    expected = h5py.File(fixtures / f"ytf/lab3_pruned_drop{drop}.h5")["model_weights"]
    written = h5py.File(out)
    names: list[str] = []
    written.visit(lambda n: names.append(n) if isinstance(written[n], h5py.Dataset) else None)
    assert len(names) == 14
    for n in names:
        assert np.array_equal(written[n][()], expected[n][()]), n


def test_writer_keeps_config_and_unchanged_file_readable(fixtures, tmp_path):
    source = fixtures / "ytf/sunglasses_bd_net.h5"
    model = read_keras_h5(source)
    out = tmp_path / "same.h5"
    assert write_keras_h5(model, source, out) == []
    assert h5py.File(out).attrs["model_config"] == h5py.File(source).attrs["model_config"]
    with torch.no_grad():
        x = torch.rand(3, 55, 47, 3)
        assert torch.equal(read_keras_h5(out)(x), model(x))


def _copy_with_config(fixtures: Path, tmp_path: Path, edit) -> Path:
    path = tmp_path / "edited.h5"
    shutil.copyfile(fixtures / "ytf/sunglasses_bd_net.h5", path)
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config["config"]["layers"])
        h5.attrs["model_config"] = json.dumps(config)
    return path


def test_absurd_filter_count_is_refused_before_allocating(fixtures, tmp_path):
    path = _copy_with_config(fixtures, tmp_path, lambda layers: layers[5]["config"].update(filters=10**12))
    with pytest.raises(TooLargeError, match="conv_3"):
        read_keras_h5(path)


def test_graph_ten_thousand_layers_deep_is_refused(fixtures, tmp_path):
    def deepen(layers):
        for i in range(10_000):
            layers.append({"class_name": "Activation", "name": f"a{i}",
                           "config": {"name": f"a{i}", "activation": "linear"},
                           "inbound_nodes": [[[layers[-1]["name"], 0, 0, {}]]]})
    with pytest.raises(TooLargeError, match="10,015 layers"):
        read_keras_h5(_copy_with_config(fixtures, tmp_path, deepen))


def test_unsupported_layer_is_named(fixtures, tmp_path):
    path = _copy_with_config(fixtures, tmp_path, lambda layers: layers[2].update(class_name="LocallyConnected2D"))
    with pytest.raises(UnsupportedLayerError, match="'pool_1'.*LocallyConnected2D"):
        read_keras_h5(path)


def test_custom_object_is_refused(fixtures, tmp_path):
    path = _copy_with_config(fixtures, tmp_path, lambda layers: layers[2].update(
        class_name="MyPool", module="evil_package.layers", registered_name="Custom>MyPool"))
    with pytest.raises(RefusedModelError, match="custom object"):
        read_keras_h5(path)


def test_truncated_file_is_unreadable(fixtures, tmp_path):
    path = tmp_path / "cut.h5"
    path.write_bytes((fixtures / "ytf/sunglasses_bd_net.h5").read_bytes()[:100_000])
    with pytest.raises(UnreadableModelError, match="truncated or corrupt"):
        read_keras_h5(path)


def test_external_link_to_a_server_file_is_refused(fixtures, tmp_path):
    path = tmp_path / "linked.h5"
    shutil.copyfile(fixtures / "ytf/sunglasses_bd_net.h5", path)
    with h5py.File(path, "r+") as h5:
        h5["model_weights/conv_1/conv_1/extra"] = h5py.ExternalLink("/etc/secret.h5", "/data")
    with pytest.raises(RefusedModelError, match="outside the upload"):
        read_keras_h5(path)


@pytest.fixture(scope="module")
def keras3():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.5 if "variance" in w.path else 0.0, 0.2, w.shape).astype("float32")
                       for w in model.weights])


def test_keras3_functional_graph_of_every_supported_layer_matches_keras(keras3, tmp_path):
    L = keras3.layers
    inp = keras3.Input((20, 18, 3), name="img")
    a = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c1")(inp)
    b = L.Conv2D(8, (2, 3), padding="same", dilation_rate=2, name="c2")(a)
    b = L.BatchNormalization(name="bn")(b)
    b = L.LeakyReLU(negative_slope=0.1, name="lr")(b)
    c = L.Concatenate(name="cat")([a, b])
    c = L.MaxPooling2D(3, strides=2, padding="same", name="mp")(c)
    c = L.ZeroPadding2D(((1, 2), (0, 1)), name="zp")(c)
    c = L.Cropping2D(((0, 1), (1, 0)), name="cr")(c)
    c = L.UpSampling2D(2, name="up")(c)
    c = L.AveragePooling2D(2, padding="same", name="ap")(c)
    c = L.ReLU(max_value=6.0, name="relu6")(c)
    g = L.GlobalMaxPooling2D(name="gmp")(c)
    d = L.GlobalAveragePooling2D(name="gap")(c)
    e = L.Reshape((7 * 5, 16), name="rs")(c)
    e = L.Flatten(name="fl")(e)
    e = L.Dense(16, activation="tanh", name="d1")(e)
    d = L.Dense(16, name="d2")(L.Concatenate(name="cat2")([d, g]))
    f = L.Add(name="add")([d, e])
    f = L.Multiply(name="mul")([f, e])
    f = L.Dropout(0.3, name="do")(f)
    f = L.Activation("sigmoid", name="act")(f)
    out = L.Softmax(name="sm")(L.Dense(5, name="logits")(f))
    model = keras3.Model(inp, out)
    _randomise(model)
    path = tmp_path / "k3.h5"
    model.save(path)
    x = np.random.default_rng(1).uniform(0, 1, (6, 20, 18, 3)).astype("float32")
    canonical = read_keras_h5(path)
    with torch.no_grad():
        out_ours = canonical(torch.from_numpy(x)).numpy()
        logits = canonical.logits(torch.from_numpy(x)).numpy()
    assert np.abs(out_ours - model.predict(x, verbose=0)).max() <= 1e-5
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), out_ours, atol=1e-6)
    assert canonical.signature.producer.startswith("Keras 3")


def test_keras3_sequential_with_stride_and_valid_padding_matches_keras(keras3, tmp_path):
    L = keras3.layers
    model = keras3.Sequential([keras3.Input((28, 28, 1)), L.Conv2D(4, 5, strides=3, name="c"),
                               L.AveragePooling2D(2, name="p"), L.Flatten(name="f"),
                               L.Dense(10, activation="softmax", name="o")])
    _randomise(model)
    path = tmp_path / "seq.h5"
    model.save(path)
    x = np.random.default_rng(2).uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    with torch.no_grad():
        ours = read_keras_h5(path)(torch.from_numpy(x)).numpy()
    assert np.abs(ours - model.predict(x, verbose=0)).max() <= 1e-5
