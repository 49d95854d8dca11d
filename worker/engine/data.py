"""Clean data for the algorithms: readers for HDF5, NPZ, MNIST idx and PNG folders, and user preprocessing.

Readers return raw values as stored (for images 0-255) as float32, already in the model's input layout;
scaling is what the user declares (:class:`~worker.engine.preprocess.Preprocessing`), never guessed: models
differ (the lab3 BadNet takes raw pixels, the CSAW-2020 BadNets take x/255). Every declared size is checked against the
limits before the data is read, and every failure is a :class:`~worker.core.errors.DataError`.
"""

import math
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path

import h5py
import numpy as np

from schemas.models import InputLayout, ModelSignature
from worker.core.errors import DataError, OptionError
from worker.core.limits import MAX_INPUT_ELEMENTS, check_bytes, check_elements
from worker.core.sniff import (
    HEAD_BYTES,
    NPY_SIGNATURE,
    ZIP_SIGNATURES,
    has_hdf5_signature,
    is_pickle_bytes,
    npy_header,
)
from worker.engine.image_files import MAX_DATASET_ELEMENTS, read_image_folder, read_mnist_idx  # noqa: F401 - re-exported

#: Dataset names accepted in HDF5 and NPZ files: CSAW's ``data``/``label``, or ``x``/``y``.
KEY_PAIRS = (("data", "label"), ("x", "y"))
ACCEPTED_DATA = "HDF5 with datasets 'data' and 'label' (or 'x' and 'y'), or NPZ with arrays 'x' and 'y'"
_NUMERIC_KINDS = "iuf"

Conversion = Callable[[np.ndarray], np.ndarray]


@dataclass
class Dataset:
    """Samples ``x`` (float32, raw values, in the model's layout) and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray
    #: Samples in the file; more than ``len(self)`` when only the first ``max_samples`` were read.
    total: int | None = None

    def __len__(self) -> int:
        return len(self.y)


def read_dataset(path: Path, signature: ModelSignature, *, max_samples: int | None = None) -> Dataset:
    """Read labelled samples for the model with ``signature`` from an HDF5 or NPZ file (told apart by content).

    Reads only the first ``max_samples`` samples when given, but refuses a file whose every sample (as a scan
    reads it) would not fit the memory budget.
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
            for dataset in (data, labels):  # reading a row decompresses the whole chunk that holds it
                if dataset.chunks is not None:
                    chunk_bytes = prod(dataset.chunks) * dataset.dtype.itemsize
                    check_bytes(f"A compression chunk of '{dataset.name}'", chunk_bytes)
            x = data[:count].astype(np.float32)
            y = labels[:count]
            total = int(data.shape[0])
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise DataError(f"The HDF5 data file cannot be read ({error}); it is truncated or corrupt.") from error
    return _finish(convert(x), y, signature.num_classes, total)


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
            headers = {key: _npz_header(archive.zip, key) for key in (x_key, y_key)}
            (x_shape, _, x_dtype), (y_shape, _, y_dtype) = headers[x_key], headers[y_key]
            count, convert = _plan(signature, max_samples, x_shape, x_dtype, y_shape, y_dtype)
            x = _npz_rows(archive.zip, x_key, headers[x_key], count).astype(np.float32)
            y = _npz_rows(archive.zip, y_key, headers[y_key], count)
            total = int(x_shape[0])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"The NPZ data file cannot be read ({error}); it is truncated or corrupt.") from error
    return _finish(convert(x), y, signature.num_classes, total)


def _npz_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of an NPZ member, from its header alone."""
    member = f"{key}.npy"
    if member not in archive.namelist():
        raise DataError(f"In the NPZ file, '{key}' is not a NumPy array.")
    with archive.open(member) as stream:
        shape, fortran_order, dtype = npy_header(stream)
    if dtype.hasobject:
        raise DataError(f"In the NPZ file, '{key}' is an array of Python objects, stored as a pickle; "
                        "bdscreen refuses pickled object arrays because unpickling runs arbitrary code.")
    return shape, fortran_order, dtype


def _npz_rows(archive: zipfile.ZipFile, key: str, header: tuple[tuple[int, ...], bool, np.dtype],
              count: int) -> np.ndarray:
    """The first ``count`` rows of an NPZ member, decompressing only the bytes they need.

    ``np.load`` would inflate the whole member: a few MB of deflated zeros can declare gigabytes."""
    shape, fortran_order, dtype = header
    if fortran_order and count < shape[0]:  # rows are not contiguous: the whole array is read (within budget)
        count = shape[0]
    row_shape = shape[1:]
    nbytes = count * prod(row_shape) * dtype.itemsize
    with archive.open(f"{key}.npy") as stream:
        npy_header(stream)
        data = stream.read(nbytes)
    if len(data) != nbytes:
        raise DataError(f"In the NPZ file, '{key}' holds {len(data):,} bytes where its header declares {nbytes:,}; "
                        "the file is truncated or corrupt.")
    order = "F" if fortran_order else "C"
    return np.frombuffer(data, dtype).reshape((count, *row_shape), order=order)[:count]


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
    # The scan reads every row (as stored, then as float32): the upload check refuses what the scan could not.
    check_bytes(f"The data file's {total:,} samples, read whole", total * prod(sample_shape) * (x_dtype.itemsize + 4))
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


def _finish(x: np.ndarray, y: np.ndarray, num_classes: int, total: int | None = None) -> Dataset:
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
    return Dataset(x=x, y=y.astype(np.int64), total=len(y) if total is None else total)
