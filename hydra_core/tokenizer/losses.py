"""Reconstruction losses of the pixel decoder: flow matching, perceptual, adversarial.

Images [B, 3, H, W] in [-1, 1]. x_hat is the one-step clean estimate x_t - t * v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProxyPerceptualLoss(nn.Module):
    """An offline stand-in for LPIPS (no pretrained VGG/AlexNet can be fetched here): L1 on a
    3-level image pyramid plus L1 on image gradients, which weights edges and texture."""

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = x_hat.new_zeros(())
        for _ in range(3):
            loss = loss + F.l1_loss(x_hat, x)
            for dim in (2, 3):
                loss = loss + F.l1_loss(torch.diff(x_hat, dim=dim), torch.diff(x, dim=dim))
            x_hat, x = F.avg_pool2d(x_hat, 2), F.avg_pool2d(x, 2)
        return loss / 3


class LPIPSLoss(nn.Module):
    def __init__(self):
        super().__init__()
        try:
            import lpips  # type: ignore
        except ImportError as error:
            raise ImportError("perceptual='lpips' needs the lpips package and its backbone weights; "
                              "use perceptual='proxy' offline") from error
        self.net = lpips.LPIPS(net="vgg").eval().requires_grad_(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(x_hat, x).mean()


def perceptual_loss(kind: str) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "proxy":
        return ProxyPerceptualLoss()
    if kind == "lpips":
        return LPIPSLoss()
    raise ValueError(f"perceptual must be lpips, proxy or none, got {kind!r}")


class PatchDiscriminator(nn.Module):
    """A small PatchGAN discriminator (spectral norm), logits per patch."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        sn = nn.utils.spectral_norm
        blocks, channels = [], 3
        for i in range(layers):
            out = width * 2**i
            blocks += [sn(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(sn(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
