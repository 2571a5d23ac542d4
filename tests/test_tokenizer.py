"""HYDRA-TOK: shapes, the GSB, the pixel decoder, InternViT initialisation, the flow sampler."""

import pytest
import torch
from transformers import InternVLVisionModel

from hydra_core.config import HydraTokConfig
from hydra_core.sampling import sample_flow
from hydra_core.tokenizer import HydraTok


@pytest.fixture(scope="module")
def tok_config():
    return HydraTokConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, gen_layers=2,
                          num_attention_heads=4, intermediate_size=128, latent_channels=8,
                          decoder_hidden_size=64, decoder_layers=2, decoder_heads=4, decoder_steps=3,
                          distill_layers=(1, 3))


@pytest.fixture(scope="module")
def tok(tok_config):
    torch.manual_seed(0)
    return HydraTok(tok_config).eval()


def test_encode_shapes_and_dtypes(tok, tok_config):
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    enc = tok.encode(pixels)
    n, c, d = tok_config.num_tokens, tok_config.latent_channels, tok_config.hidden_size
    assert enc.gsb.mean.shape == enc.gsb.logvar.shape == (2, n, c)
    assert enc.gsb.h_bn.shape == (2, n, d) and enc.semantic.shape == (2, n, d)
    assert len(enc.gen_hidden) == tok_config.gen_layers
    assert len(enc.sem_hidden) == tok_config.num_hidden_layers - tok_config.gen_layers
    assert enc.gsb.mean.dtype == torch.float32
    # Inference uses the mean; training samples around it.
    assert torch.equal(enc.gsb.latent, enc.gsb.mean)
    sampled = tok.encode(pixels, sample=True, generator=torch.Generator().manual_seed(0)).gsb
    assert not torch.equal(sampled.latent, sampled.mean)


def test_gsb_losses_match_their_formulas(tok):
    h_mid = torch.randn(2, 16, 64)
    out = tok.gsb(h_mid)
    kl = -0.5 * (1 + out.logvar - out.mean**2 - out.logvar.exp()).sum(-1).mean()
    assert torch.allclose(out.kl_loss(), kl)
    assert torch.allclose(out.h_bn, tok.gsb.unproj_und(out.mean))
    # A standard-normal posterior has zero KL.
    zero = type(out)(mean=torch.zeros(1, 4, 8), logvar=torch.zeros(1, 4, 8), latent=torch.zeros(1, 4, 8), h_bn=None)
    assert zero.kl_loss().item() == 0.0


def test_decode_is_deterministic_for_a_seed(tok):
    latent = torch.randn(2, 16, 8)
    a = tok.decode(latent, generator=torch.Generator().manual_seed(3))
    b = tok.decode(latent, generator=torch.Generator().manual_seed(3))
    c = tok.decode(latent, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_losses_are_finite_and_have_gradients(tok, tok_config):
    tok.train()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    teacher = InternVLVisionModel(tok_config.vit_config()).eval()
    enc = tok.encode(pixels, sample=True)
    flow, x_hat = tok.decoder_losses(pixels, enc.gsb.latent)
    teacher_hidden = teacher(pixels, output_hidden_states=True).hidden_states
    loss = flow + sum(tok.reg_losses(enc).values()) + tok.distill_loss(enc, teacher_hidden)
    loss.backward()
    tok.eval()
    assert torch.isfinite(loss) and x_hat.shape == pixels.shape
    assert tok.gen_vit.layers[0].mlp.fc1.weight.grad is not None
    # Block 3 (the first Sem-ViT block) is distilled, so Sem-ViT learns in tokenizer training.
    assert tok.sem_vit.layers[0].mlp.fc2.weight.grad is not None
    tok.zero_grad(set_to_none=True)


def test_semantic_noise_feeds_sem_vit_a_noised_latent_and_leaves_the_latent_clean(tok):
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    clean = tok.encode(pixels)
    noised = tok.encode(pixels, semantic_noise=0.7, generator=torch.Generator().manual_seed(0))
    again = tok.encode(pixels, semantic_noise=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noised.gsb.mean, clean.gsb.mean) and torch.equal(noised.gsb.h_bn, clean.gsb.h_bn)
    assert not torch.allclose(noised.semantic, clean.semantic, atol=1e-3)
    assert torch.equal(noised.semantic, again.semantic)  # the generator draws t and the noise


def test_noise_latent_drowns_small_directions_first():
    """t = 0 keeps the latent; t = 1 is pure noise at the batch's mean and std; in between, a direction
    with a large share of the variance keeps more of its signal than a small one."""
    from hydra_core.tokenizer.model import noise_latent

    torch.manual_seed(0)
    mean = torch.randn(256, 4, 2) * torch.tensor([3.0, 0.3]) + 1.0  # channel 0 large, channel 1 small
    generator = lambda: torch.Generator().manual_seed(1)
    assert torch.allclose(noise_latent(mean, torch.zeros(256), generator()), mean, atol=1e-5)
    pure = noise_latent(mean, torch.ones(256), generator())
    assert pure.mean().item() == pytest.approx(mean.mean().item(), abs=0.05)
    assert pure.std().item() == pytest.approx(mean.std().item(), rel=0.05)
    half = noise_latent(mean, torch.full((256,), 0.5), generator())
    kept = [torch.corrcoef(torch.stack([mean[..., c].flatten(), half[..., c].flatten()]))[0, 1] for c in (0, 1)]
    assert kept[0] > 0.75 and kept[1] < 0.3, kept  # 0.82 and 0.14 in theory


def test_distillation_is_zero_against_itself(tok, tok_config):
    """With the student's own hidden states as teacher, 1 - cos is 0 at every distilled layer."""
    pixels = torch.rand(1, 3, 32, 32)
    enc = tok.encode(pixels)
    own = [None] + [torch.cat([h[:, :1], h], dim=1) for h in enc.gen_hidden + enc.sem_hidden]  # fake CLS
    assert tok.distill_loss(enc, own).item() == pytest.approx(0.0, abs=1e-5)


def test_init_from_internvit_matches_source_features(tmp_path, tok_config):
    """Gen-ViT initialised from an InternVL-vision checkpoint reproduces the source's layer-`gen_layers` features."""
    torch.manual_seed(1)
    source = InternVLVisionModel(tok_config.vit_config()).eval()
    with torch.no_grad():  # non-trivial layer scales and position embeddings
        for layer in source.encoder.layer:
            layer.lambda_1.uniform_(0.5, 1.5)
            layer.lambda_2.uniform_(0.5, 1.5)
        source.embeddings.position_embeddings.normal_(std=0.1)
        source.embeddings.cls_token.normal_(std=0.1)
    source.save_pretrained(tmp_path / "internvit", safe_serialization=True)
    tok = HydraTok.from_internvit(tok_config, tmp_path / "internvit").eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = source(pixels, output_hidden_states=True).hidden_states[tok_config.gen_layers]
        got = tok.gen_vit(pixels)[-1]
        assert torch.allclose(got, expected, atol=1e-5)
        # Sem-ViT holds the source's later blocks.
        assert torch.equal(tok.sem_vit.layers[0].mlp.fc1.weight, source.encoder.layer[tok_config.gen_layers].mlp.fc1.weight)


def test_init_from_internvit_refuses_a_smaller_model(tmp_path, tok_config):
    small = InternVLVisionModel(HydraTokConfig(**{**tok_config.__dict__, "num_hidden_layers": 2, "gen_layers": 1,
                                                  "distill_layers": (1,)}).vit_config())
    small.save_pretrained(tmp_path / "small", safe_serialization=True)
    with pytest.raises(ValueError, match="lacks"):
        HydraTok.from_internvit(tok_config, tmp_path / "small")


def test_flow_sampler_transports_noise_to_a_known_point():
    """For data concentrated at x0, the exact velocity is (x_t - x0) / t; Euler then lands on x0."""
    x0 = torch.tensor([[1.5, -2.0, 0.25]])
    noise = torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    out = sample_flow(lambda x, t: (x - x0) / t[:, None], noise, steps=7)
    assert torch.allclose(out, x0, atol=1e-5)


def test_flow_sampler_time_convention_and_callback():
    """Constant velocity v moves x by -v over t: 1 -> 0; the callback sees decreasing times ending at 0."""
    seen = []
    out = sample_flow(lambda x, t: torch.ones_like(x), torch.zeros(2, 4), steps=5,
                      callback=lambda i, t, x, clean: seen.append(t))
    assert torch.allclose(out, -torch.ones(2, 4))
    assert torch.allclose(torch.tensor(seen), torch.tensor([0.8, 0.6, 0.4, 0.2, 0.0]))  # evenly spaced
    with pytest.raises(ValueError, match="steps"):
        sample_flow(lambda x, t: x, torch.zeros(1, 1), steps=0)


def test_flow_sampler_starts_part_way():
    """From t = start, a constant velocity v moves x by -start * v; the first step's time is `start`."""
    times = []
    out = sample_flow(lambda x, t: times.append(float(t[0])) or torch.ones_like(x), torch.zeros(1, 2), steps=4,
                      start=0.4)
    assert torch.allclose(out, torch.full((1, 2), -0.4))
    assert times == pytest.approx([0.4, 0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="start"):
        sample_flow(lambda x, t: x, torch.zeros(1, 1), steps=2, start=0.0)


def test_training_times_can_mix_two_noise_levels():
    """flow_time_loc (1.5, 0): noise-biased and centred times in equal parts; a single loc draws as before."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from hydra_core.sampling import sample_logit_normal

    def draw(loc):
        return sample_logit_normal(20000, torch.Generator().manual_seed(0), loc=loc)

    noisy, centred, mixed = draw(1.5), draw(0.0), draw((1.5, 0.0))
    assert (mixed < 0.3).float().mean() > 2 * (noisy < 0.3).float().mean()
    assert (mixed > 0.7).float().mean() > 1.5 * (centred > 0.7).float().mean()
    expected = compute_density_for_timestep_sampling("logit_normal", 20000, logit_mean=1.5, logit_std=1.0,
                                                     generator=torch.Generator().manual_seed(0))
    # The old draw exactly, except the 10% replaced by uniform times.
    assert 0.85 < (noisy == expected).float().mean() < 0.95
