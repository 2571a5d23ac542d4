"""InternViT-300M as published: the paper presets have its q/k/v biases (304,012,288 ViT parameters), and its
OpenGVLab checkpoint layout (fused attn.qkv, attn.proj, mlp.fc1/fc2, norm1/norm2, ls1/ls2) converts to the
project's names. The state dicts are built here with the published names and shapes; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file
from torch.nn import functional as F

from hydra_core.config import HydraTokConfig, paper_1_5b, paper_7b, tiny
from hydra_core.tokenizer import HydraTok
from hydra_core.tokenizer.model import convert_internvit_state

INTERNVIT_300M_PARAMETERS = 304_012_288  # OpenGVLab/InternViT-300M-448px-V2.5


def published_layout(depth: int, width: int, ffn: int, patch: int, positions: int, device="meta") -> dict:
    """The names and shapes of OpenGVLab's InternViT checkpoints (modeling_intern_vit.py, qkv_bias=True)."""
    state = {"embeddings.class_embedding": torch.empty(1, 1, width, device=device),
             "embeddings.patch_embedding.weight": torch.empty(width, 3, patch, patch, device=device),
             "embeddings.patch_embedding.bias": torch.empty(width, device=device),
             "embeddings.position_embedding": torch.empty(1, positions, width, device=device)}
    for i in range(depth):
        p = f"encoder.layers.{i}."
        state |= {p + "attn.qkv.weight": torch.empty(3 * width, width, device=device),
                  p + "attn.qkv.bias": torch.empty(3 * width, device=device),
                  p + "attn.proj.weight": torch.empty(width, width, device=device),
                  p + "attn.proj.bias": torch.empty(width, device=device),
                  p + "mlp.fc1.weight": torch.empty(ffn, width, device=device),
                  p + "mlp.fc1.bias": torch.empty(ffn, device=device),
                  p + "mlp.fc2.weight": torch.empty(width, ffn, device=device),
                  p + "mlp.fc2.bias": torch.empty(width, device=device),
                  p + "norm1.weight": torch.empty(width, device=device), p + "norm1.bias": torch.empty(width, device=device),
                  p + "norm2.weight": torch.empty(width, device=device), p + "norm2.bias": torch.empty(width, device=device),
                  p + "ls1": torch.empty(width, device=device), p + "ls2": torch.empty(width, device=device)}
    return state


def vit_parameters(config) -> int:
    with init_empty_weights():
        tok = HydraTok(config.tokenizer)
    return sum(p.numel() for n, p in tok.named_parameters() if n.startswith(("gen_vit.", "sem_vit.")))


@pytest.mark.parametrize("preset", [paper_1_5b, paper_7b])
def test_paper_presets_count_the_published_internvit_300m(preset):
    assert vit_parameters(preset()) == INTERNVIT_300M_PARAMETERS
    published = published_layout(24, 1024, 4096, 14, 1025)
    assert sum(v.numel() for v in published.values()) == INTERNVIT_300M_PARAMETERS


def test_the_tiny_preset_keeps_its_attention_without_biases():
    config = tiny()
    assert not config.tokenizer.qkv_bias
    with init_empty_weights():
        names = {n for n, _ in HydraTok(config.tokenizer).named_parameters()}
    assert "gen_vit.layers.0.attention.q_proj.weight" in names
    assert not any(n.endswith("_proj.bias") and ".attention." in n for n in names)


def test_the_published_layout_converts_to_every_tensor_of_the_paper_tokenizer():
    """Names and shapes at full size, on the meta device (no memory)."""
    config = paper_1_5b().tokenizer
    converted = convert_internvit_state(published_layout(24, 1024, 4096, 14, 1025))
    with init_empty_weights():
        tok = HydraTok(config)
    tok.load_internvit_state(converted)  # raises, naming the tensors, on any missing / extra / misshapen one
    assert converted["encoder.layer.3.attention.k_proj.bias"].shape == (1024,)
    assert converted["embeddings.cls_token"].shape == (1, 1, 1024)
    # With the "vision_model." prefix of the InternVL chat checkpoints as well.
    prefixed = {"vision_model." + k: v for k, v in published_layout(24, 1024, 4096, 14, 1025).items()}
    assert convert_internvit_state(prefixed).keys() == converted.keys()


def reference_internvit(state: dict, pixels: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """OpenGVLab's InternViT forward (LayerNorm, no qk-norm), written from its modeling file."""
    x = F.conv2d(pixels, state["embeddings.patch_embedding.weight"], state["embeddings.patch_embedding.bias"],
                 stride=state["embeddings.patch_embedding.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["embeddings.class_embedding"].expand(len(x), -1, -1), x], dim=1)
    x = x + state["embeddings.position_embedding"]
    for i in range(depth):
        p = f"encoder.layers.{i}."
        b, n, c = x.shape
        h = F.layer_norm(x, (c,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = x + state[p + "ls1"] * F.linear(h, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        h = F.layer_norm(x, (c,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                     state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        x = x + state[p + "ls2"] * h
    return x


@pytest.fixture
def small_config() -> HydraTokConfig:
    return HydraTokConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=4, gen_layers=2,
                          num_attention_heads=4, intermediate_size=96, qkv_bias=True, latent_channels=8,
                          decoder_hidden_size=32, decoder_layers=1, decoder_heads=2, distill_layers=(2, 4))


def random_published(config: HydraTokConfig) -> dict:
    torch.manual_seed(0)
    layout = published_layout(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                              config.patch_size, config.num_tokens + 1, device="cpu")
    return {k: torch.randn(v.shape) * (0.5 if k.endswith(("ls1", "ls2")) else 0.1) + (1.0 if "norm" in k and
            k.endswith("weight") else 0.0) for k, v in layout.items()}


def test_a_converted_checkpoint_computes_what_internvit_computes(tmp_path, small_config):
    state = random_published(small_config)
    save_file(state, tmp_path / "model.safetensors")
    tok = HydraTok.from_internvit(small_config, tmp_path).eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = reference_internvit(state, pixels, small_config.num_attention_heads, small_config.gen_layers)
        gen = tok.gen_vit(pixels)[-1]
        torch.testing.assert_close(gen, expected, atol=1e-5, rtol=1e-4)
        # Sem-ViT runs the later blocks, on the patch tokens.
        full = reference_internvit(state, pixels, small_config.num_attention_heads, small_config.num_hidden_layers)
        sem = tok.sem_vit(gen)[-1]
    assert tok.sem_vit.layers[0].attention.v_proj.bias.abs().sum() > 0
    # Sem-ViT gets gen[:, 1:] in the model, here every token, so its output matches the full forward.
    torch.testing.assert_close(sem, full, atol=1e-4, rtol=1e-4)


def test_a_mismatch_names_the_tensors(small_config):
    state = random_published(small_config)
    no_bias = HydraTok(HydraTokConfig(**{**small_config.__dict__, "qkv_bias": False}))
    with pytest.raises(ValueError, match=r"12 checkpoint tensors have no place in the config \(the checkpoint has "
                                         r"q/k/v biases: set qkv_bias=True\): gen_vit\.layers\.0\.attention\.k_proj\.bias"):
        no_bias.load_internvit_state(state)
    del state["encoder.layers.1.ls2"]
    state["encoder.layers.0.mlp.fc1.weight"] = torch.zeros(7, small_config.hidden_size)
    with pytest.raises(ValueError) as error:
        HydraTok(small_config).load_internvit_state(state)
    message = str(error.value)
    assert "gen_vit.layers.1.lambda_2" in message and "lacks 1 tensors" in message
    assert "gen_vit.layers.0.mlp.fc1.weight: checkpoint (7, 48) vs config (96, 48)" in message
