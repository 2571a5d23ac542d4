"""Image metrics on uint8 RGB arrays [H, W, 3] (scikit-image's implementations)."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    if np.array_equal(reference, test):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, test, data_range=255))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    return float(structural_similarity(reference, test, channel_axis=-1, data_range=255))
