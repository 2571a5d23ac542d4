"""Generation-Semantic Bottleneck (GSB).

    [mu, logvar] = W_proj H_mid            H_mid: [B, N, D] -> mu, logvar: [B, N, C]
    z = mu + eps * exp(0.5 * logvar)       (training; the mean mu at inference)
    H_bn = W_unproj^und mu                 [B, N, C] -> [B, N, D], input of Sem-ViT
    L_KL = -1/2 sum_c (1 + logvar - mu^2 - exp(logvar))    (mean over tokens)
    L_cos = 1 - cos(H_mid, H_bn)                           (mean over tokens)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn


def posterior(moments: torch.Tensor) -> DiagonalGaussianDistribution:
    """[B, N, 2C] (mean, logvar) -> diffusers' DiagonalGaussianDistribution over [B * N, C, 1, 1] (it
    clamps logvar to [-30, 20]). It splits dim 1 and sums its KL over dims 1-3, so each token is one
    of its "images", and its noise is drawn in the [B, N, C] order."""
    return DiagonalGaussianDistribution(moments.reshape(-1, moments.shape[-1], 1, 1))


@dataclass
class GSBOutput:
    mean: torch.Tensor  # [B, N, C]
    logvar: torch.Tensor  # [B, N, C], clamped
    latent: torch.Tensor  # [B, N, C]: a sample while training, the mean otherwise
    h_bn: torch.Tensor  # [B, N, D]: un-projected mean, the Sem-ViT input

    @property
    def posterior(self) -> DiagonalGaussianDistribution:
        return posterior(torch.cat([self.mean, self.logvar], dim=-1))

    def kl_loss(self) -> torch.Tensor:
        """KL to N(0, I): summed over channels, averaged over tokens."""
        return self.posterior.kl().mean()


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the feature axis, averaged over tokens."""
    return (1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


class GenerationSemanticBottleneck(nn.Module):
    def __init__(self, hidden_size: int, latent_channels: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2 * latent_channels)
        self.unproj_und = nn.Linear(latent_channels, hidden_size)

    def encode(self, h_mid: torch.Tensor) -> DiagonalGaussianDistribution:
        """H_mid [B, N, D] -> the posterior (its logvar clamped to [-30, 20] for a stable exp)."""
        # The GSB may stay in float32 under bf16/fp16/int8/nf4 (see precision.py).
        return posterior(self.proj(h_mid.to(self.proj.weight.dtype)))

    def unproject(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, D]: the Sem-ViT input for a clean or noisy latent."""
        return self.unproj_und(latent.to(self.unproj_und.weight.dtype))

    def forward(self, h_mid: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> GSBOutput:
        dist = self.encode(h_mid)
        shape = (*h_mid.shape[:-1], self.unproj_und.in_features)  # [B, N, C]
        mean, logvar = dist.mode().reshape(shape), dist.logvar.reshape(shape)
        latent = dist.sample(generator=generator).reshape(shape) if sample else mean
        return GSBOutput(mean=mean, logvar=logvar, latent=latent, h_bn=self.unproject(mean))
