"""Render the example images of the app's Reconstruct and Chat tabs (run from the repo root).

    PYTHONPATH=. python assets/examples/make_examples.py

Three ShapesWorld scenes at 256 px and one crop of a held-out photo; small PNGs, committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hydra_core.data import photos
from hydra_core.data import shapesworld as sw

HERE = Path(__file__).resolve().parent
SIZE = 256


def main() -> None:
    rng = np.random.default_rng(7)
    for k, n_objects in enumerate((1, 2, 3)):
        scene = sw.sample_scene(rng, n_objects=n_objects)
        Image.fromarray(sw.render(scene, size=SIZE)).save(HERE / f"shapes_{k + 1}.png", optimize=True)
    crop = photos.heldout_photo_crops(1, size=SIZE, seed=4)[0]
    Image.fromarray(crop).save(HERE / "photo_1.png", optimize=True)
    for path in sorted(HERE.glob("*.png")):
        print(f"{path.name}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
