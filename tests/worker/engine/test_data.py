"""Data readers bring samples into the model's layout and refuse what does not fit; preprocessing is declared."""

import gzip
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from schemas.models import InputLayout, ModelFormat, ModelSignature
from worker.core.errors import DataError, OptionError, TooLargeError
from worker.engine.data import read_dataset, read_image_folder, read_mnist_idx
from worker.engine.preprocess import Preprocessing


def signature(shape: list[int], layout: InputLayout = InputLayout.nhwc, num_classes: int = 1283) -> ModelSignature:
    return ModelSignature(format=ModelFormat.keras_h5, input_name="input", input_shape=shape, input_layout=layout,
                          num_classes=num_classes, layers=[])


YTF = signature([55, 47, 3])


def write_h5(path: Path, data: np.ndarray, labels: np.ndarray, names: tuple[str, str] = ("data", "label")) -> Path:
    with h5py.File(path, "w") as file:
        file[names[0]] = data
        file[names[1]] = labels
    return path


def csaw_like(count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Images N x 3 x 55 x 47 uint8 and float labels, as in the CSAW-HackML data files."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 3, 55, 47), dtype=np.uint8), np.arange(count, dtype=np.float32) * 100


def test_csaw_layout_becomes_the_models_nhwc(tmp_path: Path) -> None:
    images, labels = csaw_like()
    dataset = read_dataset(write_h5(tmp_path / "valid.bin", images, labels), YTF)
    assert dataset.x.shape == (6, 55, 47, 3) and dataset.x.dtype == np.float32
    np.testing.assert_array_equal(dataset.x, images.transpose(0, 2, 3, 1).astype(np.float32))
    assert dataset.y.dtype == np.int64 and dataset.y.tolist() == [0, 100, 200, 300, 400, 500]
    assert len(dataset) == 6


def test_max_samples_reads_the_first_rows(tmp_path: Path) -> None:
    images, labels = csaw_like()
    dataset = read_dataset(write_h5(tmp_path / "valid.h5", images, labels), YTF, max_samples=2)
    assert dataset.x.shape == (2, 55, 47, 3) and dataset.y.tolist() == [0, 100]


def test_nhwc_data_for_an_nchw_model(tmp_path: Path) -> None:
    images, labels = csaw_like()
    nhwc = images.transpose(0, 2, 3, 1)
    dataset = read_dataset(write_h5(tmp_path / "d.h5", nhwc, labels, ("x", "y")), signature([3, 55, 47],
                                                                                            InputLayout.nchw))
    np.testing.assert_array_equal(dataset.x, images.astype(np.float32))


def test_npz(tmp_path: Path) -> None:
    images, labels = csaw_like()
    np.savez_compressed(tmp_path / "d.npz", x=images, y=labels.astype(np.int32).reshape(-1, 1))
    dataset = read_dataset(tmp_path / "d.npz", YTF, max_samples=4)
    assert dataset.x.shape == (4, 55, 47, 3) and dataset.y.tolist() == [0, 100, 200, 300]


def test_npz_with_object_array_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 28, 28)), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="pickled object arrays"):
        read_dataset(tmp_path / "d.npz", signature([28, 28, 1], num_classes=10))


def test_grayscale_gains_a_channel_axis(tmp_path: Path) -> None:
    images = np.arange(4 * 28 * 28, dtype=np.float64).reshape(4, 28, 28) % 256
    path = write_h5(tmp_path / "mnist.h5", images, np.array([1, 2, 3, 4]))
    assert read_dataset(path, signature([28, 28, 1], num_classes=10)).x.shape == (4, 28, 28, 1)
    assert read_dataset(path, signature([1, 28, 28], InputLayout.nchw, 10)).x.shape == (4, 1, 28, 28)
    flat = read_dataset(path, signature([784], InputLayout.flat, 10)).x
    np.testing.assert_array_equal(flat, images.reshape(4, 784).astype(np.float32))


def test_shape_that_does_not_fit_names_both(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "cifar.h5", np.zeros((2, 3, 32, 32), np.uint8), np.array([0, 1]))
    with pytest.raises(DataError, match=r"per-sample shape \(3, 32, 32\) but the model takes \(55, 47, 3\) \(NHWC\)"):
        read_dataset(path, YTF)


def test_colour_images_do_not_flatten(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "d.h5", np.zeros((2, 4, 4, 3)), np.array([0, 1]))
    with pytest.raises(DataError, match="per-sample shape"):
        read_dataset(path, signature([48], InputLayout.flat, 2))


@pytest.mark.parametrize("labels", [np.array([0, 1283]), np.array([-1, 0]), np.array([0.0, 1.5]),
                                    np.array([0.0, np.nan])])
def test_bad_labels(tmp_path: Path, labels: np.ndarray) -> None:
    path = write_h5(tmp_path / "d.h5", np.zeros((2, 55, 47, 3), np.uint8), labels)
    with pytest.raises(DataError, match="[Ll]abels"):
        read_dataset(path, YTF)


def test_label_count_must_match(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "d.h5", np.zeros((3, 55, 47, 3), np.uint8), np.array([0, 1]))
    with pytest.raises(DataError, match=r"shape \(2,\); with 3 samples"):
        read_dataset(path, YTF)


def test_missing_datasets_are_named(fixtures: Path) -> None:
    with pytest.raises(DataError, match="'model_weights'"):
        read_dataset(fixtures / "ytf/sunglasses_bd_net.h5", YTF)


def test_hdf5_links_to_other_files_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 4)
    write_h5(tmp_path / "other.h5", np.zeros((2, 28, 28)), np.array([0, 1]))
    with h5py.File(tmp_path / "external.h5", "w") as file:
        file.create_dataset("data", shape=(1, 32, 32), dtype=np.uint8, external=[(str(secret), 0, 1024)])
        file["label"] = np.array([0])
    with h5py.File(tmp_path / "linked.h5", "w") as file:
        file["data"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "data")
        file["label"] = np.array([0, 1])
    for name in ("external.h5", "linked.h5"):
        with pytest.raises(DataError, match="stored in the file itself"):
            read_dataset(tmp_path / name, signature([28, 28, 1], num_classes=10))


def test_truncated_hdf5_is_a_data_error(tmp_path: Path) -> None:
    images, labels = csaw_like(50)
    content = write_h5(tmp_path / "full.h5", images, labels).read_bytes()
    (tmp_path / "cut.h5").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_dataset(tmp_path / "cut.h5", YTF)


def test_declared_size_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as file:  # declared, never written: the file stays small
        file.create_dataset("data", shape=(10_000_000, 3, 224, 224), dtype=np.uint8)
        file.create_dataset("label", shape=(10_000_000,), dtype=np.int64)
    with pytest.raises(TooLargeError, match="limit"):
        read_dataset(path, signature([224, 224, 3]))


@pytest.mark.parametrize("content", [pickle.dumps({"x": [1, 2], "y": [0]}, protocol=4), b"", b"text, not data"])
def test_pickles_and_unknown_files_are_data_errors(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "valid.h5").write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_dataset(tmp_path / "valid.h5", YTF)
    if content.startswith(b"\x80"):
        assert "Python pickle (protocol 4)" in caught.value.message


def test_preprocessing_per_channel_nhwc() -> None:
    x = np.random.default_rng(1).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    rule = Preprocessing(divide_by=255.0, mean=[0.485, 0.456, 0.406], std=(0.229, 0.224, 0.225))
    expected = (x.astype(np.float64) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(rule.apply(x, InputLayout.nhwc), expected, rtol=1e-5, atol=1e-5)


def test_preprocessing_bgr_nchw() -> None:
    x = np.random.default_rng(2).uniform(0, 255, (2, 3, 5, 4)).astype(np.float32)
    rule = Preprocessing(mean=(103.9, 116.8, 123.7), bgr=True)
    expected = x[:, ::-1].astype(np.float64) - np.array([103.9, 116.8, 123.7]).reshape(1, 3, 1, 1)
    out = rule.apply(x, InputLayout.nchw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_preprocessing_scalar_on_flat_input() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(Preprocessing(divide_by=2, mean=(1,), std=(4,)).apply(x, InputLayout.flat),
                               (x / 2 - 1) / 4)


def test_preprocessing_mismatches_are_option_errors() -> None:
    with pytest.raises(OptionError, match="mean has 3 values but the images have 1 channels"):
        Preprocessing(mean=(1, 2, 3)).apply(np.zeros((1, 28, 28, 1)), InputLayout.nhwc)
    with pytest.raises(OptionError, match="bgr"):
        Preprocessing(bgr=True).apply(np.zeros((1, 1, 28, 28)), InputLayout.nchw)
    with pytest.raises(OptionError, match="flat"):
        Preprocessing(std=(1, 2, 3)).apply(np.zeros((1, 784)), InputLayout.flat)
    for bad in ({"divide_by": 0}, {"std": (1, 0, 1)}, {"mean": (1, 2), "std": (1, 2, 3)}, {"mean": ()},
                {"mean": (float("nan"),)}):
        with pytest.raises(OptionError):
            Preprocessing(**bad)


def test_real_mnist_idx(fixtures: Path) -> None:
    images, labels = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                                    fixtures / "mnist/t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() == 255
    assert labels.dtype == np.int64 and labels[:5].tolist() == [7, 2, 1, 0, 4]
    first, _ = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                              fixtures / "mnist/t10k-labels-idx1-ubyte.gz", limit=100)
    np.testing.assert_array_equal(first, images[:100])


def test_mnist_idx_swapped_or_truncated(fixtures: Path, tmp_path: Path) -> None:
    images_gz, labels_gz = fixtures / "mnist/t10k-images-idx3-ubyte.gz", fixtures / "mnist/t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match="not an idx image file"):
        read_mnist_idx(labels_gz, images_gz)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(images_gz.read_bytes())[:5000]))
    with pytest.raises(DataError, match="truncated"):
        read_mnist_idx(cut, labels_gz)
    with pytest.raises(DataError, match="not gzip or are corrupt"):
        read_mnist_idx(labels_gz.parent / "csaw_c_clean_label_bd_net.h5", labels_gz)


def test_real_png_samples(fixtures: Path) -> None:
    images, names = read_image_folder(fixtures / "ytf/samples")
    assert images.shape == (15, 55, 47, 3) and images.dtype == np.float32
    assert names == sorted(names) and names[0] == "ano_0_label=0.png"
    assert 0 <= images.min() and images.max() <= 255


def test_image_folder_needs_one_size(fixtures: Path, tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes((fixtures / "ytf/samples/cl_0_label=43.png").read_bytes())
    (tmp_path / "c.png").write_bytes((fixtures / "ytf/sunglasses_trigger.png").read_bytes())
    with pytest.raises(DataError, match="one size"):
        read_image_folder(tmp_path)
