"""The flow head: velocity of the GSB latent at the image positions, from the LLM hidden states.

    v = Head(AdaLN(H_LLM^vis, t_emb))       H: [B, N, H_llm], t: [B] -> v: [B, N, C]

Residual MLP blocks modulated by the timestep embedding with AdaLN-Zero (DiT), and DiT's
zero-initialised final layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AdaLNZeroMLPBlock, FinalLayer, TimestepEmbedder


class FlowHead(nn.Module):
    def __init__(self, llm_width: int, width: int, layers: int, latent_channels: int):
        super().__init__()
        self.input_proj = nn.Linear(llm_width, width)
        self.t_embedder = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(AdaLNZeroMLPBlock(width) for _ in range(layers))
        self.final = FinalLayer(width, latent_channels)

    def forward(self, hidden: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(hidden)
        c = self.t_embedder(t).to(x.dtype)  # [B, W]
        for block in self.blocks:
            x = block(x, c)
        return self.final(x, c)
