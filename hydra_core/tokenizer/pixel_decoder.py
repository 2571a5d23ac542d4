"""Pixel flow decoder: predicts the velocity eps - x of a noisy image, conditioned on the GSB latent.

A DiT over the image's patches (one token per latent token). Each token's condition is its own
latent (through the decoder's un-projection W_unproj^gen) plus the timestep embedding, applied by
AdaLN-Zero in every block; the latent is also added to the token stream.

Shapes: B batch, N = (image_size / patch)^2 tokens, C latent channels, p patch, Dd decoder width.
Pixels in [-1, 1]. Convention: x_t = (1 - t) * x + t * eps, t = 1 is noise.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import HydraTokConfig
from ..layers import DiTBlock, FinalLayer, TimestepEmbedder
from ..sampling import StepCallback, sample_flow, to_velocity


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, 3 * p * p]"""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """[B, N, 3 * p * p] -> [B, 3, H, W]"""
    b, n, _ = tokens.shape
    g = int(round(n**0.5))
    x = tokens.reshape(b, g, g, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, g * patch, g * patch)


class PixelFlowDecoder(nn.Module):
    def __init__(self, config: HydraTokConfig):
        super().__init__()
        self.config = config
        width, patch = config.decoder_hidden_size, config.patch_size
        self.patch_embed = nn.Linear(3 * patch * patch, width)
        self.latent_proj = nn.Linear(config.latent_channels, width)  # W_unproj^gen
        self.cond_mlp = nn.Sequential(nn.Linear(config.latent_channels, width), nn.SiLU(), nn.Linear(width, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.t_embedder = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(DiTBlock(width, config.decoder_heads) for _ in range(config.decoder_layers))
        self.final = FinalLayer(width, 3 * patch * patch)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """x_t [B, 3, H, W], t [B], latent [B, N, C] -> the velocity or the clean image (config's
        decoder_prediction) [B, 3, H, W]."""
        dtype = self.pos_embed.dtype  # not patch_embed's: under int8/nf4 that holds packed integers
        latent = latent.to(dtype)
        h = self.patch_embed(patchify(x_t.to(dtype), self.config.patch_size)) + self.latent_proj(latent) + self.pos_embed
        c = self.cond_mlp(latent) + self.t_embedder(t).unsqueeze(1)  # [B, N, Dd]
        for block in self.blocks:
            h = block(h, c)
        return unpatchify(self.final(h, c), self.config.patch_size).to(x_t.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, steps: int | None = None,
               noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
               callback: StepCallback | None = None) -> torch.Tensor:
        """Latent [B, N, C] -> image [B, 3, H, W] in [-1, 1] by Euler flow sampling."""
        size = self.config.image_size
        if noise is None:
            noise = torch.randn(latent.shape[0], 3, size, size, generator=generator, device="cpu")
        noise = noise.to(device=latent.device, dtype=torch.float32)
        steps = self.config.decoder_steps if steps is None else steps
        prediction = self.config.decoder_prediction

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return to_velocity(prediction, self(x, t, latent).float(), x, t)

        image = sample_flow(velocity, noise, steps,
                            shift=self.config.decoder_time_shift, callback=callback)
        return image.clamp(-1, 1)
