"""Evaluation of HYDRA: metrics (PSNR/SSIM) and the recon / geneval / vqa suites.

`python -m hydra_core.eval --help` runs the suites from the command line; `evaluate` and
`format_table` are the programmatic API. The suites are imported lazily, so that importing
`hydra_core.eval.metrics` (as the pipeline does) stays light and free of import cycles.
"""

from __future__ import annotations

__all__ = ["SUITES", "evaluate", "format_table", "score_geneval"]


def __getattr__(name: str):
    if name in __all__:
        from . import suites

        return getattr(suites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
