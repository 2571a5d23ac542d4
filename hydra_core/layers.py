"""Small building blocks shared by the pixel flow decoder and the flow head.

Shapes: B batch, N tokens, D width.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation. x: [B, N, D]; shift, scale: [B, D] or [B, N, D]."""
    if shift.dim() == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


class TimestepEmbedder(TimestepEmbedding):
    """t in [0, 1] -> [B, D]: diffusers' sinusoidal `Timesteps` of 1000 t (DiT's integer scale, cos
    first) followed by its `TimestepEmbedding` MLP (Linear, SiLU, Linear)."""

    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__(frequency_dim, width)
        self.timesteps = Timesteps(frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.register_state_dict_post_hook(_to_saved_names)
        self.register_load_state_dict_pre_hook(_from_saved_names)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Scaled before the sinusoid (not by Timesteps' `scale`) so the arguments stay bit-identical.
        emb = self.timesteps(t.float() * 1000.0)
        return super().forward(emb.to(self.linear_1.weight.dtype))


# Checkpoints name the MLP's layers as TimestepEmbedder's earlier nn.Sequential did (mlp.0, mlp.2);
# these state-dict hooks keep those names in saved and loaded weights, so every file loads unchanged.
SAVED_NAMES = {"linear_1.": "mlp.0.", "linear_2.": "mlp.2."}


def _rename(state: dict, prefix: str, names: dict[str, str]) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        for old, new in names.items():
            if key.startswith(prefix + old):
                state[prefix + new + key[len(prefix + old):]] = state.pop(key)


def _to_saved_names(module, state, prefix, local_metadata) -> None:
    _rename(state, prefix, SAVED_NAMES)


def _from_saved_names(module, state, prefix, *args) -> None:
    _rename(state, prefix, {v: k for k, v in SAVED_NAMES.items()})


class AdaLNZeroMLPBlock(nn.Module):
    """Residual MLP block modulated by a condition c (AdaLN-Zero: the gate starts at zero)."""

    def __init__(self, width: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, int(width * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(width * mlp_ratio), width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)
        if gate.dim() == 2:
            gate = gate.unsqueeze(1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DiTBlock(nn.Module):
    """Transformer block with AdaLN-Zero conditioning on c: [B, D] (global) or [B, N, D] (per token)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, int(width * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(width * mlp_ratio), width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c.dim() == 2:  # a global condition [B, D] modulates every token alike
            c = c.unsqueeze(1)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """AdaLN-modulated norm + zero-initialised linear output (DiT's final layer)."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        for layer in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # This layer may be kept in float32 while the rest runs in bf16/fp16 (see precision.py).
        dtype = self.linear.weight.dtype
        x, c = x.to(dtype), c.to(dtype)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
