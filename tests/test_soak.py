"""Many users at once lose nothing: bench/soak.py's run_soak, sized for CI (8 users x 3 mixed requests on
the tiny random pipeline; `python bench/soak.py` runs 8 x 25 on the bundled model)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak import run_soak  # noqa: E402


def test_eight_concurrent_users_get_their_own_answers_and_memory_stays_flat(served_app, tmp_path):
    report = run_soak(served_app[1], users=8, requests=3, folder=tmp_path, warmup=1, log=lambda *args: None)
    assert report["requests"] == 24
    assert report["failed"] == 0, report["failures"]
    assert report["wrong_answers"] == 0  # each answer equals what its user got alone
    assert report["rss_growth"] <= 0.10, report
