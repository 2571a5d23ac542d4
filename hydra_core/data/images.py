"""The one conversion of image arrays to uint8 RGB, on scikit-image's img_as_ubyte, gray2rgb and rgba2rgb.

Used by the photo loader, the ShapesWorld object detector and the pipeline's array inputs.
"""

from __future__ import annotations

import numpy as np
from skimage import img_as_ubyte
from skimage.color import gray2rgb, rgba2rgb


def to_ubyte(array: np.ndarray) -> np.ndarray:
    """A bool, float or integer array -> uint8 of the same shape.

    bool and floats in [0, 1] go through img_as_ubyte (rounded, negatives clipped); floats with
    values above 1 are read as 0-255 (img_as_ubyte takes floats in [-1, 1] only) and NaN as 0. Integers are read as 0-255 values and clipped, since img_as_ubyte would scale an
    int32 / int64 array from its whole range (to black); only 16-bit arrays with values above 255 are
    scaled from 0-65535 by img_as_ubyte."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return img_as_ubyte(array)
    if array.dtype.kind == "f":
        array = np.nan_to_num(array, nan=0.0, posinf=255.0, neginf=0.0)
        if array.size and array.max() > 1.0:
            return np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return img_as_ubyte(np.clip(array, 0.0, 1.0))
    if array.dtype.kind in "ui":
        if array.dtype.itemsize == 2 and array.size and array.max() > 255:
            return img_as_ubyte(array)
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ValueError(f"an image array must hold numbers, got dtype {array.dtype}")


def to_rgb_ubyte(image: np.ndarray) -> np.ndarray:
    """A grey [H, W], RGB [H, W, 3] or RGBA [H, W, 4] array of any dtype -> uint8 RGB [H, W, 3],
    transparency composited over white."""
    array = to_ubyte(image)
    if array.ndim == 2:
        return gray2rgb(array)
    if array.shape[-1] == 4:
        return img_as_ubyte(rgba2rgb(array, background=(1, 1, 1)))
    return np.ascontiguousarray(array[..., :3])
