"""Peak memory of loading a checkpoint in each precision (random weights, a bf16 safetensors file).

    python bench/load_memory.py                                  # paper-1.5b on the CPU: fp32, bf16, nf4, int8
    python bench/load_memory.py --device cuda                    # on a GPU: fp32, bf16, fp16, nf4, int8
    python bench/load_memory.py --preset tiny --old-src /tmp/wt-old   # also the loader of another checkout

The preset is built once with random weights (std 0.02, norms at one) and saved as a bf16 checkpoint
folder in a temporary directory (or --checkpoint DIR, kept). Each precision is then loaded in a fresh
process (HydraPipeline.from_pretrained), which reports:
  weights     the bytes of the loaded model's tensors (packed codes and their statistics for int8 / nf4)
  VmHWM       the process's peak resident memory (/proc/self/status), up to the end of the load and a
              read of every weight's pages (as a first forward pass would). It counts the checkpoint's pages
              read through safetensors' memory map, which are page cache: a tensor kept in the file's dtype
              stays mapped from the file, not copied
  anon        the peak anonymous resident memory (RssAnon), sampled by a thread every 2 ms: the memory the
              process itself allocated
  ratio       (peak - the same figure before loading) / weights; the issue's target is below 1.3
  device      torch.cuda.max_memory_allocated (CUDA only)
  seconds     load time (not a speed claim on a shared machine)
Writes JSON (--json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024
            for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


class AnonPeak(threading.Thread):
    """The largest RssAnon seen, read every `every` seconds until stopped."""

    def __init__(self, every: float = 0.002):
        super().__init__(daemon=True)
        self.every, self.peak, self._done = every, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _status()["RssAnon"])
            time.sleep(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, _status()["RssAnon"])
        return self.peak


def model_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers, bitsandbytes' quantisation statistics included."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)  # Params4bit: the per-block absmax (and its code)
        if state is not None:
            total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code) if t is not None)
        scb = getattr(tensor, "SCB", None)  # Int8Params: one float scale per row
        if scb is not None:
            total += scb.numel() * scb.element_size()
    for module in model.modules():  # Linear8bitLt moves SCB to its state at the first forward
        state = getattr(module, "state", None)
        if state is not None and getattr(state, "SCB", None) is not None and getattr(module.weight, "SCB", None) is None:
            total += state.SCB.numel() * state.SCB.element_size()
    return total


def touch(model) -> None:
    """Read one value per 4 KiB page of every CPU tensor, as a first forward pass would: a tensor that kept
    the file's dtype is still only mapped, and its pages become resident (page cache) when read."""
    import torch

    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type == "cpu" and tensor.numel():
                flat = tensor.data.reshape(-1)
                flat[:: max(1, 4096 // flat.element_size())].sum()


# ------------------------------------------------------------------ child processes
def build_checkpoint(preset_name: str, folder: Path) -> None:
    """Random bf16 weights for the preset, saved with save_pretrained (no PCA basis)."""
    import torch

    from hydra_core.config import SPECIAL_TOKENS, preset
    from hydra_core.loading import build_empty, load_state, save_pretrained
    from hydra_core.text import train_bpe

    config = preset(preset_name)
    config.token_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    tokenizer = train_bpe(["a photo of a red circle", "warm up"], vocab_size=300)
    model = build_empty(config)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, param in model.state_dict(keep_vars=True).items():
        if name == "llm.lm_head.weight" and config.llm.get("tie_word_embeddings"):
            continue
        if "norm" in name and name.endswith("weight") or name.endswith(("lambda_1", "lambda_2")):
            state[name] = torch.ones(param.shape, dtype=torch.bfloat16)
        else:  # drawn in float32 a tensor at a time, kept in bf16
            state[name] = (torch.randn(param.shape, generator=generator) * 0.02).to(torch.bfloat16)
    load_state(model, state)
    save_pretrained(model, tokenizer, folder, dtype=torch.bfloat16)


def measure_load(checkpoint: Path, device: str, precision: str) -> dict:
    import torch

    import hydra_core.loading  # noqa: F401  (imported before the baseline: their memory is not the load's)
    import hydra_core.precision  # noqa: F401
    import hydra_core.quantize  # noqa: F401
    from hydra_core.pipeline import HydraPipeline

    if precision in ("int8", "nf4"):
        import bitsandbytes  # noqa: F401
        import transformers.integrations.bitsandbytes  # noqa: F401
    before = _status()
    sampler = AnonPeak()
    sampler.start()
    if device == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe = HydraPipeline.from_pretrained(str(checkpoint), device=device, precision=precision)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    touch(pipe.model)
    anon = sampler.stop()
    after = _status()
    weights = model_bytes(pipe.model)
    return {"precision": precision, "device": device, "weights_bytes": weights,
            "vmhwm_bytes": after["VmHWM"], "anon_peak_bytes": anon,
            "rss_before_bytes": before["VmRSS"], "anon_before_bytes": before["RssAnon"],
            "vmhwm_ratio": (after["VmHWM"] - before["VmRSS"]) / weights,
            "anon_ratio": (anon - before["RssAnon"]) / weights,
            "rss_after_bytes": after["VmRSS"], "anon_after_bytes": after["RssAnon"],
            "device_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
            "load_s": seconds}


def _child(args) -> None:
    sys.path.insert(0, str(args.src))
    if args.child == "build":
        build_checkpoint(args.preset, args.checkpoint)
    else:
        print("RESULT " + json.dumps(measure_load(args.checkpoint, args.device, args.child)), flush=True)


# ------------------------------------------------------------------ the driver
def _run_child(src: Path, what: str, checkpoint: Path, device: str, preset: str, log) -> dict | None:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--src", str(src),
               "--checkpoint", str(checkpoint), "--device", device, "--preset", preset]
    # The checkout under test first; whatever else the caller's PYTHONPATH held (packages installed with
    # --target, say) stays reachable after it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=src)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        log(f"  {what} failed in {src}: {lines[-1] if lines else done.returncode}")
        return {"precision": what, "device": device, "error": lines[-1] if lines else str(done.returncode)}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def _size(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def markdown(rows: list[dict]) -> str:
    lines = ["| loader | precision | weights | peak VmHWM | peak anon RSS | RSS before | VmHWM / weights | "
             "anon / weights | device peak | load s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loader']} | {r['precision']} | {r['error'][:80]} |  |  |  |  |  |  |  |")
            continue
        lines.append(f"| {r['loader']} | {r['precision']} | {_size(r['weights_bytes'])} | {_size(r['vmhwm_bytes'])} | "
                     f"{_size(r['anon_peak_bytes'])} | {_size(r['rss_before_bytes'])} | {r['vmhwm_ratio']:.2f} | "
                     f"{r['anon_ratio']:.2f} | {_size(r['device_peak_bytes'])} | {r['load_s']:.1f} |")
    return "\n".join(lines)


def run(preset: str = "paper-1.5b", device: str = "cpu", precisions: list[str] | None = None,
        checkpoint: Path | None = None, old_src: Path | None = None, log=print) -> dict:
    precisions = precisions or (["fp32", "bf16", "fp16", "nf4", "int8"] if device == "cuda"
                                else ["fp32", "bf16", "nf4", "int8"])
    temp = None
    if checkpoint is None:
        temp = tempfile.TemporaryDirectory(prefix=f"hydra-{preset}-")
        checkpoint = Path(temp.name) / "checkpoint"
    try:
        if not (checkpoint / "model.safetensors").is_file():
            log(f"building a random {preset} checkpoint (bf16) in {checkpoint}")
            started = time.perf_counter()
            if _run_child(ROOT, "build", checkpoint, "cpu", preset, log) is not None:
                raise SystemExit("building the checkpoint failed")
            log(f"  built in {time.perf_counter() - started:.0f} s, "
                f"{(checkpoint / 'model.safetensors').stat().st_size / 2**30:.2f} GiB")
        rows = []
        loaders = [("new", ROOT)] + ([("old", Path(old_src))] if old_src else [])
        for precision in precisions:
            for loader, src in loaders:
                log(f"loading {precision} on {device} ({loader} loader)")
                row = _run_child(src, precision, checkpoint, device, preset, log)
                if row is not None:
                    row["loader"] = loader
                    rows.append(row)
                    if "error" not in row:
                        log(f"  weights {_size(row['weights_bytes'])}, VmHWM {_size(row['vmhwm_bytes'])}, "
                            f"anon {_size(row['anon_peak_bytes'])}, {row['load_s']:.0f} s")
        file_bytes = (checkpoint / "model.safetensors").stat().st_size
    finally:
        if temp is not None:
            temp.cleanup()
    return {"preset": preset, "device": device, "checkpoint_file_bytes": file_bytes,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-1.5b")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="+", default=None)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a checkpoint folder to load (built there first, and kept, if it has no weights)")
    parser.add_argument("--old-src", type=Path, default=None,
                        help="another checkout (e.g. git worktree add /tmp/wt-old HEAD) whose loader is measured too")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    result = run(args.preset, args.device, args.precisions, args.checkpoint, args.old_src,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{args.preset}, random weights in a bf16 file of {_size(result['checkpoint_file_bytes'])}, "
          f"loaded on {args.device}, {result['date_utc']} UTC\n")
    print(markdown(result["rows"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
