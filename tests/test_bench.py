"""The GPU check script runs end to end (here on the CPU, on the tiny preset)."""

import json
import subprocess
import sys
from pathlib import Path


def test_gpu_check_runs_on_cpu_and_writes_json_and_markdown(tmp_path):
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    subprocess.run([sys.executable, str(script), "--preset", "tiny", "--device", "cpu", "--precisions", "fp32", "bf16",
                    "--steps", "2", "--decoder-steps", "2", "--tokens", "2", "--repeats", "1", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "tiny-cpu.json").read_text())
    rows = {row["precision"]: row for row in result["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    assert rows["fp32"]["max_diff_latent"] == 0.0 and rows["bf16"]["max_diff_latent"] > 0.0
    assert all(row["chat_tokens_per_s"] > 0 and row["generate_s"] > 0 for row in rows.values())
    assert "| bf16 |" in (tmp_path / "tiny-cpu.md").read_text()
