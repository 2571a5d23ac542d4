"""The bundled HYDRA-Tiny: it loads by default and scores above a floor on a small evaluation, so a
regression of the checkpoint or of the code around it fails CI. Floors sit well below the model
card's numbers (which use 60 samples a suite), since 12 samples are noisy."""

import pytest

from hydra_core.eval.suites import evaluate
from hydra_core.pipeline import BUNDLED_CHECKPOINT

# Measured at limit 12, seed 123: 20.2 dB, 18.4 dB, 0.33, 0.58. A random-weight model scores about
# 5 dB, 0.0 and 0.0; answering "no" to everything scores about 0.2 on VQA.
FLOORS = {
    ("recon", "shapesworld", "psnr"): 18.0,
    ("recon", "photos", "psnr"): 16.5,
    ("geneval", "overall"): 0.08,
    ("vqa", "overall"): 0.3,
}


@pytest.fixture(scope="module")
def results(bundled_pipeline):
    return evaluate(bundled_pipeline, limit=12, seed=123)


def test_bundled_checkpoint_is_the_default_and_small(bundled_pipeline):
    assert bundled_pipeline.config.preset == "tiny"
    size = (BUNDLED_CHECKPOINT / "model.safetensors").stat().st_size
    assert size < 60e6, f"the bundled weights are {size / 1e6:.1f} MB; keep them under 60 MB"
    assert bundled_pipeline.basis is not None  # the latent panel's fixed PCA basis travels with it
    assert (BUNDLED_CHECKPOINT / "README.md").is_file()


@pytest.mark.parametrize("path", list(FLOORS), ids=lambda p: "/".join(p))
def test_bundled_checkpoint_scores_above_its_floor(results, path):
    value = results
    for key in path:
        value = value[key]
    assert value is not None and value >= FLOORS[path], f"{'/'.join(path)} = {value}, floor {FLOORS[path]}"
