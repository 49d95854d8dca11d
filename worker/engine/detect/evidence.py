"""Evidence pictures of a detector: masks, patterns, stamped inputs and attribution maps as PNG files.

Small inputs (28 x 28) are enlarged by an integer factor with nearest-neighbour sampling so a person can see the
pixels; values are raw pixels (0-255), clipped, or a [0, 1] map drawn as grey levels.
"""

from pathlib import Path

import numpy as np
from PIL import Image

#: Pictures are enlarged until their shorter side reaches at least this many pixels.
MIN_SIDE = 112


def save_png(path: Path, image: np.ndarray, unit: bool = False) -> str:
    """Write H x W or H x W x C ``image`` (raw pixels, or values in [0, 1] when ``unit``) and return the file name."""
    values = np.asarray(image, np.float32)
    if unit:
        values = values * 255.0
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    scale = max(1, -(-MIN_SIDE // min(pixels.shape[:2])))
    picture = Image.fromarray(pixels)
    if scale > 1:
        picture = picture.resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path.name


def heat(values: np.ndarray) -> np.ndarray:
    """An H x W map of non-negative values as H x W x 3 pixels, black (0) through red to yellow (the maximum)."""
    v = np.asarray(values, np.float32)
    v = v / v.max() if v.max() > 0 else v
    return np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1) * 255.0
