"""The space the flow generates in: GSB means (raw scale) <-> normalised latents.

latent_norm "global" (the paper's convention, like a VAE's scaling factor): z = (x - latent_mean) /
latent_std, one scalar pair for every channel (HydraModel.normalize).

latent_norm "pca" (`LatentWhitening`): z = ((x - center) @ basis) / scale, the latents whitened along their
principal axes, with scale = sqrt(eigenvalue + floor * largest eigenvalue). The tiny tokenizer's 32
channels span about 8 directions, with variances from 15 down to 0.02: globally normalised, the small
ones (which carry the shapes' edges) sit far below the noise's unit variance at every t above ~0.1, so
the flow must settle them in its last Euler step or two. Whitened, every direction the data uses starts
at unit variance and is drawn across the whole trajectory; the floor keeps the unused directions
(variance ~1e-3) near zero instead of blowing their noise up to unit size. The cost: under the global
scale the large directions (colour, layout) emerge first, whitened they do not; on HYDRA-Tiny shape from a
partly noised latent improved and colour from pure noise fell (the model card's segment 2 notes). A larger
floor keeps part of that order.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_NORMS = ("global", "pca")


class LatentWhitening(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # Filled by fit() or from the checkpoint.
        self.register_buffer("center", torch.zeros(channels))
        self.register_buffer("basis", torch.eye(channels))  # [C, C], columns = principal axes
        self.register_buffer("scale", torch.ones(channels))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, floor: float) -> None:
        """Principal axes and scales from raw GSB means [..., C]."""
        x = latents.reshape(-1, latents.shape[-1]).double().cpu()
        center = x.mean(0)
        eigenvalues, basis = torch.linalg.eigh(torch.cov((x - center).T))
        eigenvalues, basis = eigenvalues.flip(0).clamp(min=0), basis.flip(1)  # largest first
        basis = basis * basis.gather(0, basis.abs().argmax(0, keepdim=True)).sign()  # deterministic signs
        for buffer, value in ((self.center, center), (self.basis, basis),
                              (self.scale, (eigenvalues + floor * eigenvalues[0]).sqrt())):
            buffer.copy_(value.to(buffer.device, buffer.dtype))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.center.float()) @ self.basis.float() / self.scale.float()).to(x.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.float() * self.scale.float()) @ self.basis.float().T + self.center.float()).to(z.dtype)
