"""python -m bench [--quick] [--json OUT]: every path side by side with what users would pick instead.

    python -m bench                    the full run (about 10-15 min on 2 idle cores)
    python -m bench --quick            fewer repeats, 256 px only for the paper-scale tokenizer (about 2 min)
    python -m bench --json bench.json  also write every sample, the machine and the settings

Sections (each row: two sides in this process, interleaved, medians, the ratio of the medians):
    bundled model   the bundled HYDRA-Tiny through the pipeline vs through the served app (gradio_client):
                    reconstruct; generate 1 and 4 images at the default steps; chat time to first token
                    and tokens per second; cold start of a new process to its first answer
    HYDRA-TOK vs FLUX.1 VAE   the paper-scale tokenizer (random weights) vs diffusers' AutoencoderKL in
                    the FLUX.1 configuration, 256² and 448²: encode, decode, round trip
    prompt KV cache one flow step with the prompt's KV cache reused vs recomputed, prompts of 16/64/256 tokens
    FLOP/s          a tiny generation step and the paper-scale tokenizer encode vs the matmul peak
    load            (only when named: --sections load) peak host memory of loading a random paper-1.5b
                    checkpoint (a 4 GiB bf16 file, built in a temporary folder) in each precision, one fresh
                    process each: bench/load_memory.py, whose own table is printed after the others

Absolute times depend on the machine and on whatever else runs on it (the JSON records the load
average); the ratios are the claim. `--smoke` runs every row at toy sizes for tests: its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("bundled", "tokenizer", "kv", "flops")
OPTIONAL_SECTIONS = ("load",)  # run only when named


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; the paper-scale tokenizer at 256² only")
    parser.add_argument("--smoke", action="store_true", help="toy sizes and one repeat (for tests; numbers meaningless)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows, every sample and the machine here")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + OPTIONAL_SECTIONS, default=list(SECTIONS))
    parser.add_argument("--checkpoint", default=None, help="the model of the bundled-model section (default: bundled)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per side (default: 5, --quick 3)")
    return parser.parse_args(argv)


def settings(args) -> dict:
    if args.smoke:
        return {"repeats": 1, "tok_repeats": 1, "tok_sizes": (32, 56), "kv_repeats": 2, "kv_lengths": (16, 64, 256),
                "steps": 2, "cold_repeats": 1, "warmup": 0, "peak_n": 256, "peak_tries": 2, "max_new_tokens": 8}
    if args.quick:
        return {"repeats": args.repeats or 3, "tok_repeats": 1, "tok_sizes": (256,), "kv_repeats": 20,
                "kv_lengths": (16, 64, 256), "steps": None, "cold_repeats": 1, "peak_n": 2048, "peak_tries": 3,
                "max_new_tokens": 64}
    return {"repeats": args.repeats or 5, "tok_repeats": 3, "tok_sizes": (256, 448), "kv_repeats": 50,
            "kv_lengths": (16, 64, 256), "steps": None, "cold_repeats": 3, "peak_n": 2048, "peak_tries": 5,
            "max_new_tokens": 64}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    import torch

    from . import bundled, flops, kv_cache, tok_vs_vae
    from .harness import machine, markdown

    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)  # smoke: one thread is far faster beside other jobs
    s = settings(args)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    if info["loadavg_1min"] > 0.5 * (info["cores"] or 1):
        log(f"warning: load average {info['loadavg_1min']:.1f} on {info['cores']} cores: something else is running, "
            "so the absolute times are upper bounds")
    started = time.perf_counter()
    rows: list[dict] = []
    peak = flops.matmul_peak(s["peak_n"], s["peak_tries"]) if "flops" in args.sections else []
    measured_flops: dict[str, tuple[float, list[float]]] = {}
    pipe = None
    if "bundled" in args.sections:
        log("bundled model: pipeline vs served app")
        rows += bundled.run(args.checkpoint, s["repeats"], steps=s["steps"], max_new_tokens=s["max_new_tokens"],
                            cold_start_repeats=s["cold_repeats"], warmup=s.get("warmup", 1), log=log)
    if "kv" in args.sections or "flops" in args.sections:
        from hydra_core.pipeline import HydraPipeline

        pipe = HydraPipeline.from_pretrained(args.checkpoint, device="cpu")
    if "kv" in args.sections:
        log("flow step: prompt KV cache reused vs recomputed")
        rows += kv_cache.run(pipe, s["kv_lengths"], s["kv_repeats"], log=log)
    if "flops" in args.sections:
        measured_flops["tiny generation step (1 image + guidance)"] = flops.tiny_step(pipe, s["kv_repeats"])
    if "tokenizer" in args.sections:
        log("HYDRA-TOK (paper scale, random weights) vs FLUX.1 VAE")
        tok_rows, tok_flops = tok_vs_vae.run(s["tok_sizes"], s["tok_repeats"], small=args.smoke, log=log)
        rows += tok_rows
        for size, f in tok_flops.items():
            measured_flops[f"paper-scale HYDRA-TOK encode {size}² (patch {f['patch']})"] = (f["encode_flops"],
                                                                                          f["encode_s"])
    if "flops" in args.sections:
        peak += flops.matmul_peak(s["peak_n"], s["peak_tries"])  # again at the end: the best of both
        rows += flops.rows(peak, s["peak_n"], measured_flops)
    load_memory = None
    if "load" in args.sections:
        from . import load_memory as lm

        log("load: peak memory of loading a checkpoint in each precision")
        load_memory = lm.run(preset="tiny" if args.smoke else "paper-1.5b", device="cpu", log=log)
    info["loadavg_1min_end"] = os.getloadavg()[0]
    table = markdown(rows)
    command = "python -m bench" + {"quick": " --quick", "smoke": " --smoke", "full": ""}[mode]
    print(f"{command} · {info['date_utc']} · {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch "
          f"threads, torch {info['torch']} · load average {info['loadavg_1min']:.1f} at the start, "
          f"{info['loadavg_1min_end']:.1f} at the end · {time.perf_counter() - started:.0f} s\n")
    print(table)
    if load_memory is not None:
        print(f"\nload: {load_memory['preset']}, random weights in a bf16 file, peak memory per precision\n")
        print(lm.markdown(load_memory["rows"]))
    result = {"command": command, "mode": mode, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in s.items()},
              "machine": info, "seconds": time.perf_counter() - started, "rows": rows}
    if load_memory is not None:
        result["load_memory"] = load_memory
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
