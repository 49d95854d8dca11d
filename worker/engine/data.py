"""Clean data for the algorithms: readers for HDF5, NPZ, MNIST idx and PNG folders, and user preprocessing.

Readers return raw values as stored (for images 0-255) as float32, already in the model's input layout;
scaling is what the user declares (:class:`~worker.engine.preprocess.Preprocessing`), never guessed: models
differ (the lab3 BadNet takes raw pixels, the CSAW-2020 BadNets take x/255). Every declared size is checked against the
limits before the data is read, and every failure is a :class:`~worker.core.errors.DataError`.
"""

import gzip
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

from schemas.models import InputLayout, ModelSignature
from worker.core.errors import DataError, OptionError, TooLargeError
from worker.core.limits import MAX_INPUT_ELEMENTS, check_elements
from worker.core.sniff import (
    HEAD_BYTES,
    NPY_SIGNATURE,
    ZIP_SIGNATURES,
    has_hdf5_signature,
    is_pickle_bytes,
    npy_header,
)

#: Elements of a whole data set as read (2e9 float32 values are 8 GB).
MAX_DATASET_ELEMENTS = 2_000_000_000
#: Dataset names accepted in HDF5 and NPZ files: CSAW's ``data``/``label``, or ``x``/``y``.
KEY_PAIRS = (("data", "label"), ("x", "y"))
ACCEPTED_DATA = "HDF5 with datasets 'data' and 'label' (or 'x' and 'y'), or NPZ with arrays 'x' and 'y'"
_NUMERIC_KINDS = "iuf"
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_GRAYSCALE_MODES = ("1", "L", "LA")

Conversion = Callable[[np.ndarray], np.ndarray]


@dataclass
class Dataset:
    """Samples ``x`` (float32, raw values, in the model's layout) and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def read_dataset(path: Path, signature: ModelSignature, *, max_samples: int | None = None) -> Dataset:
    """Read labelled samples for the model with ``signature`` from an HDF5 or NPZ file (told apart by content).

    Reads only the first ``max_samples`` samples when given (NPZ arrays are read whole, then cut).
    """
    if max_samples is not None and max_samples < 1:
        raise OptionError(f"max_samples must be at least 1 (got {max_samples}).")
    try:
        with path.open("rb") as file:
            head = file.read(HEAD_BYTES)
            is_hdf5 = has_hdf5_signature(file, path.stat().st_size)
    except OSError as error:
        raise DataError(f"The data file cannot be read: {error.strerror or error}.") from error
    if not head:
        raise DataError("The data file is empty.")
    if is_hdf5:
        return _read_hdf5(path, signature, max_samples)
    if head.startswith(ZIP_SIGNATURES):
        return _read_npz(path, signature, max_samples)
    found = is_pickle_bytes(head)
    if found:
        raise DataError(f"The data file is {found}; bdscreen refuses pickles because unpickling runs arbitrary "
                        f"code. Save the data as {ACCEPTED_DATA}.")
    if head.startswith(NPY_SIGNATURE):
        raise DataError(f"The data file is a single .npy array without labels; save it as {ACCEPTED_DATA}.")
    raise DataError(f"The data file is in no format bdscreen reads; save it as {ACCEPTED_DATA}.")


def _read_hdf5(path: Path, signature: ModelSignature, max_samples: int | None) -> Dataset:
    try:
        with h5py.File(path, "r") as file:
            x_key, y_key = _pick_keys(list(file.keys()), "HDF5 file")
            data, labels = _stored_dataset(file, x_key), _stored_dataset(file, y_key)
            count, convert = _plan(signature, max_samples, data.shape, data.dtype, labels.shape, labels.dtype)
            x = data.astype(np.float32)[:count]
            y = labels[:count]
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise DataError(f"The HDF5 data file cannot be read ({error}); it is truncated or corrupt.") from error
    return _finish(convert(x), y, signature.num_classes)


def _stored_dataset(file: h5py.File, key: str) -> h5py.Dataset:
    """The dataset ``key`` if its values are stored in the file itself.

    HDF5 links, external storage and virtual datasets can point at other files on the server; following them
    would let an upload read those files.
    """
    link = file.get(key, getlink=True)
    dataset = file[key] if isinstance(link, h5py.HardLink) else None
    if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
        raise DataError(f"In the HDF5 file, '{key}' must be a dataset stored in the file itself, not a group, "
                        "a link, external storage or a virtual dataset.")
    return dataset


def _read_npz(path: Path, signature: ModelSignature, max_samples: int | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            x_key, y_key = _pick_keys(archive.files, "NPZ file")
            headers = {}
            for key in (x_key, y_key):
                member = f"{key}.npy"
                if member not in archive.zip.namelist():
                    raise DataError(f"In the NPZ file, '{key}' is not a NumPy array.")
                with archive.zip.open(member) as stream:
                    shape, _fortran_order, dtype = npy_header(stream)
                if dtype.hasobject:
                    raise DataError(f"In the NPZ file, '{key}' is an array of Python objects, stored as a pickle; "
                                    "bdscreen refuses pickled object arrays because unpickling runs arbitrary code.")
                headers[key] = shape, dtype
            (x_shape, x_dtype), (y_shape, y_dtype) = headers[x_key], headers[y_key]
            # np.load reads an array whole, so the limit applies to all of it, not only max_samples rows.
            total, convert = _plan(signature, None, x_shape, x_dtype, y_shape, y_dtype)
            count = total if max_samples is None else min(total, max_samples)
            x = archive[x_key][:count].astype(np.float32)
            y = archive[y_key][:count]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"The NPZ data file cannot be read ({error}); it is truncated or corrupt.") from error
    return _finish(convert(x), y, signature.num_classes)


def _pick_keys(names: list[str], what: str) -> tuple[str, str]:
    for x_key, y_key in KEY_PAIRS:
        if x_key in names and y_key in names:
            return x_key, y_key
    shown = ", ".join(repr(name) for name in names[:20]) or "nothing"
    raise DataError(f"The {what} holds {shown}; bdscreen reads {ACCEPTED_DATA}.")


def _plan(signature: ModelSignature, max_samples: int | None, x_shape: tuple[int, ...], x_dtype: np.dtype,
          y_shape: tuple[int, ...], y_dtype: np.dtype) -> tuple[int, Conversion]:
    """Check declared shapes and types before reading; return how many samples to read and the layout change."""
    if x_dtype.kind not in _NUMERIC_KINDS or y_dtype.kind not in _NUMERIC_KINDS:
        raise DataError(f"Data and labels must be numbers; found {x_dtype} data and {y_dtype} labels.")
    if len(x_shape) < 2 or x_shape[0] == 0:
        raise DataError(f"The data has shape {tuple(x_shape)}; bdscreen needs one or more samples (N first).")
    total = x_shape[0]
    if y_shape not in ((total,), (total, 1)):
        raise DataError(f"The labels have shape {tuple(y_shape)}; with {total} samples they must be ({total},).")
    sample_shape = tuple(int(d) for d in x_shape[1:])
    check_elements("One data sample", sample_shape, MAX_INPUT_ELEMENTS)
    count = total if max_samples is None else min(total, max_samples)
    check_elements("The data", (count, *sample_shape), MAX_DATASET_ELEMENTS)
    return count, _conversion(sample_shape, tuple(signature.input_shape), signature.input_layout)


def _conversion(sample: tuple[int, ...], target: tuple[int, ...], layout: InputLayout) -> Conversion:
    """How a batch with per-sample shape ``sample`` becomes the model's ``target`` (channels moved or added)."""
    if sample == target:
        return _same
    if layout == InputLayout.nhwc and len(target) == 3:
        height, width, channels = target
        if sample == (channels, height, width):
            return lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if channels == 1 and sample == (height, width):
            return lambda x: x[..., np.newaxis]
    if layout == InputLayout.nchw and len(target) == 3:
        channels, height, width = target
        if sample == (height, width, channels):
            return lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if channels == 1 and sample == (height, width):
            return lambda x: x[:, np.newaxis]
    # Only single-channel images flatten unambiguously; colour images would depend on the channel order.
    grayscale = len(sample) == 2 or (len(sample) == 3 and 1 in (sample[0], sample[-1]))
    if layout == InputLayout.flat and len(target) == 1 and grayscale and math.prod(sample) == target[0]:
        return lambda x: x.reshape(len(x), target[0])
    raise DataError(f"The data has per-sample shape {sample} but the model takes {target} ({layout}).")


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _finish(x: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    """Validate values read: finite samples, integral labels within the model's classes."""
    if not np.isfinite(x).all():
        raise DataError("The data contains NaN or infinite values.")
    y = y.reshape(-1)
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError("The labels must be whole numbers (class indices); found fractional or NaN labels.")
    outside = np.flatnonzero((y < 0) | (y >= num_classes))
    if outside.size:
        first = outside[0]
        raise DataError(f"Labels must lie in [0, {num_classes}) for a model with {num_classes} classes; sample "
                        f"{first} has label {y[first]:g} ({outside.size} of {len(y)} labels are outside).")
    return Dataset(x=x, y=y.astype(np.int64))


def read_mnist_idx(images_gz: Path, labels_gz: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read gzipped MNIST idx files: images N x rows x cols x 1 (float32, 0-255) and labels (int64)."""
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be at least 1 (got {limit}).")
    try:
        with gzip.open(images_gz, "rb") as images, gzip.open(labels_gz, "rb") as labels:
            magic, count, rows, cols = struct.unpack(">IIII", _read_exact(images, 16, images_gz.name))
            if magic != _IDX_IMAGES_MAGIC:
                raise DataError(f"{images_gz.name} is not an idx image file (magic {magic:#010x}).")
            label_magic, label_count = struct.unpack(">II", _read_exact(labels, 8, labels_gz.name))
            if label_magic != _IDX_LABELS_MAGIC:
                raise DataError(f"{labels_gz.name} is not an idx label file (magic {label_magic:#010x}).")
            if count != label_count:
                raise DataError(f"{images_gz.name} holds {count} images but {labels_gz.name} {label_count} labels.")
            count = count if limit is None else min(count, limit)
            check_elements("The idx images", (count, rows, cols), MAX_DATASET_ELEMENTS)
            pixels = np.frombuffer(_read_exact(images, count * rows * cols, images_gz.name), np.uint8)
            classes = np.frombuffer(_read_exact(labels, count, labels_gz.name), np.uint8)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"The idx files cannot be read ({error}); they are not gzip or are corrupt.") from error
    return pixels.reshape(count, rows, cols, 1).astype(np.float32), classes.astype(np.int64)


def _read_exact(stream: gzip.GzipFile, size: int, name: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DataError(f"{name} is truncated: expected {size} more bytes, found {len(data)}.")
    return data


def read_image_folder(folder: Path) -> tuple[np.ndarray, list[str]]:
    """Read the PNG files of ``folder`` in file-name order as N x H x W x C float32 0-255, and their names.

    Colour images become RGB (alpha dropped), grayscale ones a single channel; all must have one shape.
    """
    if not folder.is_dir():
        raise DataError(f"{folder.name} is not a folder of PNG images.")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() == ".png" and path.is_file())
    if not paths:
        raise DataError(f"{folder.name} holds no .png files.")
    arrays: list[np.ndarray] = []
    for path in paths:
        array = _read_png(path)
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"All images must have one size: {paths[0].name} is {arrays[0].shape} (H x W x C) but "
                            f"{path.name} is {array.shape}.")
        if not arrays:
            check_elements("The images", (len(paths), *array.shape), MAX_DATASET_ELEMENTS)
        arrays.append(array)
    return np.stack(arrays).astype(np.float32), [path.name for path in paths]


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise DataError(f"{path.name} is not a PNG image (its content is {image.format}).")
            channels = 1 if image.mode in _GRAYSCALE_MODES else 3
            check_elements(f"Image {path.name}", (image.height, image.width, channels), MAX_INPUT_ELEMENTS)
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Image.DecompressionBombError as error:
        raise TooLargeError(f"Image {path.name} is too large: {error}") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{path.name} cannot be read as a PNG image ({error}).") from error
    return array.reshape(*array.shape[:2], channels)
