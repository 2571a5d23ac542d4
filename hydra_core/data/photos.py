"""Natural photographs bundled offline with scikit-image.

Only images that ship inside the scikit-image wheel are used (no loader that
downloads); a loader that fails is skipped.  A few photos are held out for
evaluation, the rest are used to train the image reconstruction path on
random crops.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from .images import to_rgb_ubyte

# Bundled with scikit-image 0.26 (grey ones are expanded to RGB).
PHOTO_NAMES = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
    "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "stereo_motorcycle", "text",
)
HELDOUT_PHOTOS = ("astronaut", "coffee", "camera", "gravel")
SPLITS = ("train", "heldout", "all")


@functools.lru_cache(maxsize=1)
def _load_all() -> dict[str, np.ndarray]:
    import skimage.data

    photos = {}
    for name in PHOTO_NAMES:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # missing file, needs a download, renamed loader...
            continue
        if isinstance(image, tuple):  # e.g. stereo_motorcycle -> (left, right, disparity)
            image = image[0]
        image = to_rgb_ubyte(image)
        image.setflags(write=False)
        photos[name] = image
    return photos


def load_photos(split: str = "train") -> dict[str, np.ndarray]:
    """Photos of a split as read-only uint8 [H, W, 3] arrays (loaded once, cached)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    photos = _load_all()
    if split == "all":
        return dict(photos)
    heldout = split == "heldout"
    return {name: img for name, img in photos.items() if (name in HELDOUT_PHOTOS) == heldout}


def _crop_side(rng: np.random.Generator, size: int, limit: int) -> int:
    """Log-uniform crop side in [size, limit], mostly within [size, 4 * size]."""
    high = limit if rng.random() < 0.2 else min(limit, 4 * size)
    if high <= size:
        return limit
    return int(round(math.exp(rng.uniform(math.log(size), math.log(high)))))


def random_photo_crops(rng: np.random.Generator, n: int, size: int = 64,
                       split: str = "train") -> np.ndarray:
    """n random square crops resized to size: uint8 [n, size, size, 3].

    Each crop comes from a random photo, has a random side (biased towards
    size..4*size pixels), is resized with LANCZOS and flipped half the time."""
    photos = load_photos(split)
    if not photos:
        raise RuntimeError(f"no photos available for split {split!r}")
    names = sorted(photos)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        image = photos[names[int(rng.integers(len(names)))]]
        h, w = image.shape[:2]
        side = _crop_side(rng, size, min(h, w))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(image[y:y + side, x:x + side])
        if side != size:
            crop = crop.resize((size, size), Image.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out


def heldout_photo_crops(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Deterministic evaluation crops from the held-out photos."""
    return random_photo_crops(np.random.default_rng(seed), n, size, split="heldout")
