"""Timing, rows and the markdown table shared by every benchmark section.

A row compares two sides, A and B, measured in the same process, interleaved (A, B, B, A, A, B, ...
so slow drift of a shared machine falls on both), each side's median and the ratio of the medians.
Absolute times depend on the machine and its load; the ratios are the claim.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch

Sample = dict[str, float]  # one run of one side: metric -> value (seconds unless the row says otherwise)


def timed(fn: Callable[[], object]) -> Callable[[], Sample]:
    """fn -> a side that reports its wall time as {"s": seconds}."""

    def run() -> Sample:
        start = time.perf_counter()
        fn()
        return {"s": time.perf_counter() - start}

    return run


def interleave(a: Callable[[], Sample], b: Callable[[], Sample], repeats: int,
               warmup: int = 1) -> tuple[list[Sample], list[Sample]]:
    """Run both sides `warmup` times untimed, then `repeats` times each, alternating which goes first."""
    for _ in range(warmup):
        a()
        b()
    samples_a, samples_b = [], []
    for i in range(repeats):
        if i % 2 == 0:
            samples_a.append(a())
            samples_b.append(b())
        else:
            samples_b.append(b())
            samples_a.append(a())
    return samples_a, samples_b


def row(section: str, name: str, a: str, b: str, values_a: list[float], values_b: list[float],
        unit: str = "s", ratio: str = "b/a", ratio_label: str | None = None, note: str = "") -> dict:
    """One comparison. ratio "b/a": B's median over A's (for times: how many times faster A is);
    "a/b": A's over B's (for rates, or a fraction of a peak)."""
    median_a, median_b = statistics.median(values_a), statistics.median(values_b)
    value = median_b / median_a if ratio == "b/a" else median_a / median_b
    return {"section": section, "name": name, "unit": unit, "a": a, "b": b,
            "a_values": [float(v) for v in values_a], "b_values": [float(v) for v in values_b],
            "a_median": float(median_a), "b_median": float(median_b), "ratio": float(value),
            "ratio_label": ratio_label or ("B / A" if ratio == "b/a" else "A / B"), "note": note}


def compare(section: str, name: str, a: tuple[str, Callable[[], Sample]], b: tuple[str, Callable[[], Sample]],
            repeats: int, warmup: int = 1, metrics: dict[str, tuple[str, str, str]] | None = None,
            note: str = "") -> list[dict]:
    """Interleave two sides and make one row per metric.

    metrics: metric key -> (row name suffix, unit, ratio) for sides that report several metrics; default
    one row for the wall time "s"."""
    samples_a, samples_b = interleave(a[1], b[1], repeats, warmup)
    metrics = metrics or {"s": ("", "s", "b/a")}
    rows = []
    for key, (suffix, unit, ratio) in metrics.items():
        rows.append(row(section, name + suffix, a[0], b[0], [s[key] for s in samples_a], [s[key] for s in samples_b],
                        unit=unit, ratio=ratio, note=note))
    return rows


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if value < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    if unit == "GFLOP/s":
        return f"{value:.3g} GFLOP/s"
    return f"{value:.3g} {unit}"


def markdown(rows: list[dict]) -> str:
    lines = ["| section | measurement | A | B | A (median) | B (median) | ratio |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['section']} | {r['name']} | {r['a']} | {r['b']} | {fmt(r['a_median'], r['unit'])} | "
                     f"{fmt(r['b_median'], r['unit'])} | {r['ratio']:.2f}× ({r['ratio_label']}) |")
    return "\n".join(lines)


def machine() -> dict:
    """What the numbers depend on: CPU, cores, threads, versions, and the load when they were taken."""
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_1min": os.getloadavg()[0]}
