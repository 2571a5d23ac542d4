"""The benchmark commands run end to end (functional tests only: no timing is asserted)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu_and_writes_json_and_markdown(tmp_path):
    script = ROOT / "bench" / "gpu_check.py"
    subprocess.run([sys.executable, str(script), "--preset", "tiny", "--device", "cpu", "--precisions", "fp32", "bf16",
                    "--steps", "2", "--decoder-steps", "2", "--tokens", "2", "--repeats", "1", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "tiny-cpu.json").read_text())
    rows = {row["precision"]: row for row in result["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    assert rows["fp32"]["max_diff_latent"] == 0.0 and rows["bf16"]["max_diff_latent"] > 0.0
    assert all(row["chat_tokens_per_s"] > 0 and row["generate_s"] > 0 for row in rows.values())
    assert "| bf16 |" in (tmp_path / "tiny-cpu.md").read_text()


def test_bench_command_prints_and_writes_every_row(tmp_path):
    """`python -m bench --smoke`: every section's rows at toy sizes, one repeat, in the table and the JSON."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out)], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=1800)
    result = json.loads(out.read_text())
    rows = result["rows"]
    names = [row["name"] for row in rows]
    by_section = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row["name"])
    # reconstruct, generate 1 and 4, first token, tokens/s, fp32 vs bf16, cold start
    assert len(by_section["bundled model"]) == 7
    assert any("generate 4 images" in name for name in by_section["bundled model"])
    assert any("cold start" in name for name in by_section["bundled model"])
    assert len(by_section["HYDRA-TOK vs FLUX.1 VAE"]) == 4 * 2  # encode, decode, two round trips; two sizes
    assert [n for n in by_section["flow step: prompt KV cache"]] == [
        f"one flow step (1 image + guidance), prompt of {k} tokens" for k in (16, 64, 256)]
    assert len(by_section["FLOP/s"]) == 1 + 2  # the tiny generation step, the tokenizer encode at two sizes
    for row in rows:
        values = row["a_values"] + row["b_values"] + [row["a_median"], row["b_median"], row["ratio"]]
        assert all(math.isfinite(v) and v > 0 for v in values), row
    # KV reuse and recomputation compute the same velocity.
    assert all(float(r["note"].split()[-1]) < 1e-3 for r in rows if r["section"] == "flow step: prompt KV cache")
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # the header, then one line per row
    assert all(name in done.stdout for name in names)
    assert result["machine"]["cores"] >= 1 and result["mode"] == "smoke"
