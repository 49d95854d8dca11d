"""Image data in the formats of the CLI, the demo and the benches: gzipped MNIST idx files and PNG folders.

Both return raw values (0-255) as float32, N x H x W x C; every declared size is checked against the limits
before the pixels are read, and every failure is a :class:`~worker.core.errors.DataError`.
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from worker.core.errors import DataError, OptionError, TooLargeError
from worker.core.limits import MAX_INPUT_ELEMENTS, check_elements

#: Elements of a whole data set as read (2e9 float32 values are 8 GB; the memory budget is usually lower).
MAX_DATASET_ELEMENTS = 2_000_000_000
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_GRAYSCALE_MODES = ("1", "L", "LA")


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
