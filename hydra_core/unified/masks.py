"""Attention masks for sequences that mix text and images.

Rule: text is causal; the tokens of one image attend to each other in both directions; anything
after an image sees all of it; padding is never attended to.

`segments` [B, L] labels each position: -1 padding, 0 text, k > 0 the k-th image of the row.
"""

from __future__ import annotations

import torch


def build_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """segments [B, L] -> boolean mask [B, 1, L, L], True where query i may attend to key j."""
    length = segments.shape[1]
    idx = torch.arange(length, device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]  # [1, L, L]
    q, k = segments[:, :, None], segments[:, None, :]
    same_image = (q == k) & (q > 0)
    allowed = (causal | same_image) & (k >= 0)
    # A padding query would attend to nothing (NaN in softmax); let it see itself.
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    return allowed[:, None]


def to_additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [B, 1, Q, K] -> additive float mask (0 where allowed, dtype min elsewhere), as eager
    and SDPA attention in transformers both take it."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def position_ids_from(segments: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: [B, L] int64."""
    real = (segments >= 0).long()
    return (real.cumsum(-1) - 1).clamp(min=0)
