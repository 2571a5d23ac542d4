"""The flow's whitened latent space (latent_norm "pca"): what it does to the latents, what converting a
trained model keeps, and that it survives saving and loading in every precision."""

from __future__ import annotations

import copy

import pytest
import torch

from hydra_core.loading import load_pretrained, save_pretrained
from hydra_core.pipeline import HydraPipeline
from hydra_core.unified import HydraModel


def anisotropic_latents(channels: int, n: int = 4096) -> torch.Tensor:
    """Raw latents [n, channels] on 6 directions with variances 16 .. 0.02 and nothing elsewhere,
    as the tiny tokenizer's: a random rotation of them, plus an offset."""
    g = torch.Generator().manual_seed(0)
    variances = torch.tensor([16.0, 9.0, 4.0, 1.0, 0.1, 0.02])
    codes = torch.randn(n, len(variances), generator=g) * variances.sqrt()
    rotation, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g))
    return codes @ rotation[:, : len(variances)].T + 0.5


@pytest.fixture()
def whitened(tiny_model):
    model = copy.deepcopy(tiny_model)
    latents = anisotropic_latents(model.config.tokenizer.latent_channels)
    before = copy.deepcopy(model)
    model.whiten_latents(latents)
    return before, model, latents


def test_whitening_gives_every_used_direction_unit_variance(whitened):
    before, model, latents = whitened

    def spectrum(z):  # variances along the principal directions, largest first
        return torch.linalg.eigvalsh(torch.cov(z.T.double())).flip(0)

    # Under the global scale the 0.02-variance direction sits ~50x below the noise's unit variance.
    assert spectrum(before.normalize(latents))[5] < 0.05
    variance = spectrum(model.normalize(latents))
    # v / (v + floor): the floor is 1e-3 x the largest variance, 0.016
    assert torch.all(variance[:4] > 0.95), variance[:6]
    assert variance[4] > 0.8 and variance[5] > 0.5  # 0.1 and 0.02
    assert variance[6:].max() < 1e-6  # unused directions are not inflated to noise size
    x = torch.randn(7, 64, latents.shape[1])
    torch.testing.assert_close(model.denormalize(model.normalize(x)), x, atol=1e-4, rtol=1e-4)


def test_converting_keeps_the_flow_heads_clean_estimate(whitened):
    """For the same hidden states and the same raw noisy latent, the converted head aims at the same raw
    clean latent: its output layer was re-expressed, not reset."""
    before, model, _ = whitened
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 64, model.llm.config.hidden_size, generator=g)
    t = torch.tensor([0.3, 0.8])
    raw_noisy = before.denormalize(torch.randn(2, 64, model.config.tokenizer.latent_channels, generator=g))
    clean = {}
    for name, m in (("global", before), ("pca", model)):
        with torch.no_grad():
            v = m.flow_head(hidden, t)
        z_t = m.normalize(raw_noisy)
        clean[name] = m.denormalize(z_t - t[:, None, None] * v)
    assert (clean["global"] - raw_noisy).abs().mean() > 1e-3  # the head does predict something
    torch.testing.assert_close(clean["pca"], clean["global"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_whitened_checkpoint_round_trips(whitened, text_tokenizer, tmp_path, precision):
    _, model, latents = whitened
    save_pretrained(model, text_tokenizer, tmp_path, dtype=torch.float16)  # as the bundled checkpoint is saved
    loaded = load_pretrained(tmp_path, precision=precision).model
    assert loaded.config.latent_norm == "pca"
    assert loaded.latent_whitening.basis.dtype == torch.float32  # kept exact whatever the precision
    torch.testing.assert_close(loaded.latent_whitening.basis, model.latent_whitening.basis)
    torch.testing.assert_close(loaded.normalize(latents[:64]), model.normalize(latents[:64]), atol=1e-5, rtol=1e-5)
    if precision == "fp32":
        pipe = HydraPipeline(loaded.eval(), text_tokenizer)
        out = pipe.generate("a photo of a red circle", steps=2, guidance=2.0, decoder_steps=1)
        assert out.latents.shape == (1, 64, latents.shape[1]) and torch.isfinite(out.latents).all()


def test_unknown_latent_norm_is_refused(tiny_config):
    config = copy.deepcopy(tiny_config)
    config.latent_norm = "zca"
    with pytest.raises(ValueError, match="latent_norm must be one of"):
        HydraModel(config)


def test_image_positions_tell_identical_tokens_apart(tiny_model, text_tokenizer, tmp_path):
    """Without position embeddings, tokens of a pure-noise-like constant latent enter the LLM identical
    (Sem-ViT has no positions); with them, each place gets its own input, and the table survives a
    save and load."""
    from hydra_core.train.stages import STAGES, trains

    model = copy.deepcopy(tiny_model)
    latent = torch.ones(1, model.config.tokenizer.num_tokens, model.config.tokenizer.latent_channels)
    with torch.no_grad():
        plain = model.image_embeds(latent)[0]
    assert (plain - plain[0]).abs().max() < 1e-5
    model.add_image_positions()
    with torch.no_grad():
        placed = model.image_embeds(latent)[0]
    distances = torch.cdist(placed, placed)
    assert distances[~torch.eye(len(placed), dtype=torch.bool)].min() > 0.05
    full = copy.deepcopy(tiny_model)
    full.add_image_positions(1.0)  # DiT's table as it is: ten times the default nudge
    torch.testing.assert_close(full.image_position, 10 * model.image_position)
    assert all(trains(STAGES[s], "image_position") for s in ("umm1", "umm2", "umm3"))
    save_pretrained(model, text_tokenizer, tmp_path, dtype=torch.float16)
    loaded = load_pretrained(tmp_path).model
    assert loaded.config.image_position_embedding
    torch.testing.assert_close(loaded.image_position, model.image_position, atol=1e-3, rtol=1e-3)
