"""Shared fixtures: a tiny HYDRA with random weights, saved as a real checkpoint folder.

Tests never download anything; the bundled checkpoint is used only by the tests that say so.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hydra_core.config import tiny
from hydra_core.data import shapesworld as sw
from hydra_core.loading import save_pretrained
from hydra_core.pipeline import BUNDLED_CHECKPOINT, HydraPipeline
from hydra_core.text import train_bpe
from hydra_core.unified import HydraModel
from hydra_core.viz import PCABasis

# Beside a training job on the same 2 cores, one thread is far faster (HYDRA_TEST_THREADS=1).
torch.set_num_threads(int(os.environ.get("HYDRA_TEST_THREADS", torch.get_num_threads())))


@pytest.fixture(scope="session")
def text_tokenizer():
    corpus = sw.text_corpus(np.random.default_rng(0), 200)
    return train_bpe(corpus, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_config(text_tokenizer):
    return tiny(vocab_size=len(text_tokenizer))


def randomize_zero_init(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """AdaLN-Zero and DiT's final layers start at zero, so an untrained model predicts zero velocity
    for every prompt; give them small random values so tests can see prompts and times matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and not param.any() and ("adaLN" in name or "final" in name):
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return randomize_zero_init(HydraModel(tiny_config)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, text_tokenizer):
    """A checkpoint folder (config.json, model.safetensors with a PCA basis, tokenizer files)."""
    path = tmp_path_factory.mktemp("hydra-tiny-random")
    latents = torch.randn(256, tiny_model.config.tokenizer.latent_channels, generator=torch.Generator().manual_seed(0))
    save_pretrained(tiny_model, text_tokenizer, path, basis=PCABasis.fit(latents.numpy()))
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint):
    return HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def served_app(tiny_pipeline, tmp_path_factory):
    """(demo, url): the app around the tiny random pipeline on a free 127.0.0.1 port, for the API and
    browser tests; closed at the end of the session."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples-cache")))
        demo, url = app.serve_locally(tiny_pipeline)
        yield demo, url
        demo.close()


@pytest.fixture(scope="session")
def bundled_pipeline():
    if not (BUNDLED_CHECKPOINT / "model.safetensors").is_file():
        pytest.fail(f"the bundled checkpoint {BUNDLED_CHECKPOINT} is missing")
    return HydraPipeline.from_pretrained(device="cpu", precision="fp32")
