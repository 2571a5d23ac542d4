"""The flow head: velocity of the GSB latent at the image positions, from the LLM hidden states.

    v = Head(AdaLN(H_LLM^vis, t_emb))       H: [B, N, H_llm], t: [B] -> v: [B, N, C]

With `latent_input` (not in the paper) the head also reads the noisy latent z_t [B, N, C] it is
denoising, through a zero-initialised linear map added to its input: v = eps - x0 is mostly the
noise at large t, and without this skip the noise reaches the head only after Sem-ViT, the projector
and every LLM layer (as a DiT's or MAR's head sees x_t directly).

Residual MLP blocks modulated by the timestep embedding with AdaLN-Zero (DiT), and DiT's
zero-initialised final layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AdaLNZeroMLPBlock, FinalLayer, TimestepEmbedder


class FlowHead(nn.Module):
    def __init__(self, llm_width: int, width: int, layers: int, latent_channels: int, latent_input: bool = False):
        super().__init__()
        self.input_proj = nn.Linear(llm_width, width)
        self.latent_proj: nn.Linear | None = None
        if latent_input:
            self.add_latent_input(latent_channels)
        self.t_embedder = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(AdaLNZeroMLPBlock(width) for _ in range(layers))
        self.final = FinalLayer(width, latent_channels)

    @torch.no_grad()
    def add_latent_input(self, latent_channels: int) -> None:
        """The latent skip, started at zero, so a trained head that gains it keeps its function."""
        weight = self.input_proj.weight
        self.latent_proj = nn.Linear(latent_channels, weight.shape[0]).to(weight.device, weight.dtype)
        nn.init.zeros_(self.latent_proj.weight)
        nn.init.zeros_(self.latent_proj.bias)

    def forward(self, hidden: torch.Tensor, t: torch.Tensor, z_t: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input_proj(hidden)
        if self.latent_proj is not None:
            if z_t is None:
                raise ValueError("this flow head reads the noisy latent: pass z_t")
            x = x + self.latent_proj(z_t.to(x.dtype))
        c = self.t_embedder(t).to(x.dtype)  # [B, W]
        for block in self.blocks:
            x = block(x, c)
        return self.final(x, c)
