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
from torch import nn


@dataclass
class GSBOutput:
    mean: torch.Tensor  # [B, N, C]
    logvar: torch.Tensor  # [B, N, C]
    latent: torch.Tensor  # [B, N, C]: a sample while training, the mean otherwise
    h_bn: torch.Tensor  # [B, N, D]: un-projected mean, the Sem-ViT input

    def kl_loss(self) -> torch.Tensor:
        kl = -0.5 * (1 + self.logvar - self.mean.pow(2) - self.logvar.exp()).sum(-1)
        return kl.mean()


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the feature axis, averaged over tokens."""
    return (1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


class GenerationSemanticBottleneck(nn.Module):
    def __init__(self, hidden_size: int, latent_channels: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2 * latent_channels)
        self.unproj_und = nn.Linear(latent_channels, hidden_size)

    def encode(self, h_mid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H_mid [B, N, D] -> (mean, logvar) [B, N, C]; logvar is clamped for a stable exp."""
        # The GSB may stay in float32 under bf16/fp16/int8/nf4 (see precision.py).
        mean, logvar = self.proj(h_mid.to(self.proj.weight.dtype)).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def unproject(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, D]: the Sem-ViT input for a clean or noisy latent."""
        return self.unproj_und(latent.to(self.unproj_und.weight.dtype))

    def forward(self, h_mid: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> GSBOutput:
        mean, logvar = self.encode(h_mid)
        latent = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latent = mean + eps * torch.exp(0.5 * logvar)
        return GSBOutput(mean=mean, logvar=logvar, latent=latent, h_bn=self.unproject(mean))
