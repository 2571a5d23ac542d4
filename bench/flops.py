"""Achieved FLOP/s against this machine's measured matmul peak.

Peak: the best of several float32 n x n matmuls (2 n^3 FLOPs each), with the threads the rest of the
run uses. Achieved: FLOPs counted by torch's FlopCounterMode (matmuls, convolutions, attention) over
the median time of the same call.
"""

from __future__ import annotations

import statistics
import time

import torch

from .harness import row, timed

SECTION = "FLOP/s"


def matmul_peak(n: int, tries: int) -> list[float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    rates = []
    for _ in range(tries):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return rates


def tiny_step(pipe, repeats: int) -> tuple[float, list[float]]:
    """FLOPs and times of one flow step of generation (1 image + guidance, the bench prompt)."""
    from .kv_cache import step_functions
    from .tok_vs_vae import count_flops

    reused, _, _ = step_functions(pipe, 6)
    for _ in range(3):
        reused()
    return count_flops(reused)[0], [timed(reused)()["s"] for _ in range(repeats)]


def rows(peak: list[float], n: int, measured: dict[str, tuple[float, list[float]]]) -> list[dict]:
    """measured: name -> (FLOPs of one call, its times in seconds)."""
    out = []
    best = max(peak)
    for name, (flops, times) in measured.items():
        achieved = [flops / t / 1e9 for t in times]
        out.append(row(SECTION, f"{name} ({flops / 1e9:.3g} GFLOP per call, median {statistics.median(times):.3g} s)",
                       "achieved", f"matmul {n}×{n} fp32 peak", achieved, [best], unit="GFLOP/s", ratio="a/b",
                       ratio_label="fraction of peak"))
    return out
