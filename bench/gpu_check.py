"""Speed, memory and fidelity of a preset with random weights, in each precision.

    python bench/gpu_check.py                                   # paper-1.5b on CUDA, 448 px, all precisions
    python bench/gpu_check.py --preset tiny --device cpu --precisions fp32   # the CPU latency of HYDRA-Tiny
    python bench/gpu_check.py --quant-check only                # only the CPU-quantised-then-moved check below

Per precision: peak memory, load time, reconstruction latency (encode + pixel decode), generation
latency (steps with guidance, one image), one flow step, chat tokens per second, and the largest
difference of the GSB latent and of the next-token logits from the reference precision (bf16 on
CUDA, fp32 on CPU). Writes JSON and a markdown table.

On CUDA it also checks ZeroGPU's path (--quant-check run|skip|only): for nf4 and int8, a checkpoint
quantised on the CPU by bitsandbytes' CPU backend (from_pretrained(defer_placement=True)) and then moved
to the GPU must give the same packed codes and outputs, within tolerance, as one quantised on the GPU
directly; nf4 also after one forward pass on the CPU (bitsandbytes repacks 4-bit weights for AVX-512 CPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra_core.config import SPECIAL_TOKENS, preset  # noqa: E402
from hydra_core.loading import build_empty, load_state  # noqa: E402
from hydra_core.pipeline import HydraPipeline  # noqa: E402
from hydra_core.precision import place  # noqa: E402
from hydra_core.text import train_bpe  # noqa: E402
from hydra_core.viz import PCABasis  # noqa: E402


def random_state(config, seed: int) -> dict[str, torch.Tensor]:
    """One set of random weights (normal, std 0.02; norms at one) shared by every precision."""
    model = build_empty(config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in model.state_dict(keep_vars=True).items():
        if name == "llm.lm_head.weight" and config.llm.get("tie_word_embeddings"):
            continue
        if "norm" in name and name.endswith("weight") or name.endswith("lambda_1") or name.endswith("lambda_2"):
            state[name] = torch.ones(param.shape)
        else:
            state[name] = torch.randn(param.shape, generator=generator) * 0.02
    return state


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 1) -> tuple[float, object]:
    """Mean seconds of `repeats` calls after one untimed call (kernel selection, allocator growth, and the
    GPU's clocks rising from idle would otherwise land in the first precision's figures)."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    sync(device)
    return (time.perf_counter() - start) / repeats, result


def measure(args, config, state, tokenizer, precision, reference) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build_empty(config)
    load_state(model, dict(state))
    model, _ = place(model, device=device, precision=precision)
    sync(device)
    load_s = time.perf_counter() - start
    pipe = HydraPipeline(model, tokenizer, PCABasis.fit(torch.randn(64, config.tokenizer.latent_channels).numpy()),
                         precision=precision)
    size = config.tokenizer.image_size
    image = (torch.rand(size, size, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    pipe.generate("warm up", steps=1, decoder_steps=1)
    encode_s, latent = timed(lambda: pipe.encode(image), device, args.repeats)
    decode_s, _ = timed(lambda: pipe.decode(latent, steps=args.decoder_steps), device, args.repeats)
    gen_s, _ = timed(lambda: pipe.generate("a photo of a red circle", steps=args.steps, guidance=4.0,
                                           decoder_steps=args.decoder_steps), device)
    ids = torch.tensor([[1] + [20] * 16], device=pipe.device)
    tok = config.tokenizer
    with torch.no_grad():
        logits = pipe.model.prefill(ids, torch.ones_like(ids)).last_logits.float().cpu()
        # One flow step with guidance: the conditional and null rows in one batch, the prefix cached.
        prefix = pipe.model.prefill(ids.repeat(2, 1), torch.ones_like(ids).repeat(2, 1))
        z = torch.randn(2, tok.num_tokens, tok.latent_channels, device=pipe.device)
        t = torch.full((2,), 0.5, device=pipe.device)
        step_s, _ = timed(lambda: pipe.model.image_velocity(z, t, prefix), device, args.repeats)

    def chat():
        prefix = pipe.model.prefill(ids, torch.ones_like(ids))
        token = torch.tensor([20], device=pipe.device)
        for _ in range(args.tokens):
            pipe.model.decode_step(token, prefix)

    with torch.no_grad():
        chat_s, _ = timed(chat, device)
    row = {
        "precision": precision,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "load_s": load_s,
        "encode_ms": 1000 * encode_s,
        "decode_ms": 1000 * decode_s,
        "reconstruct_ms": 1000 * (encode_s + decode_s),
        "generate_s": gen_s,
        "flow_step_ms": 1000 * step_s,
        "chat_tokens_per_s": args.tokens / chat_s,
        "chat_token_ms": 1000 * chat_s / args.tokens,
    }
    ref = reference or {"latent": latent, "logits": logits}
    row["max_diff_latent"] = float((latent - ref["latent"]).abs().max())
    row["max_diff_logits"] = float((logits - ref["logits"]).abs().max())
    del pipe, model
    return row, {"latent": latent, "logits": logits}


QUANT_CHECK_TOLERANCE = {"codes_differ": 1e-3, "latent_rel": 0.02, "logits_rel": 0.02}


def _quant_outputs(pipe, image, ids) -> dict[str, torch.Tensor]:
    """The packed codes and scales of every quantised layer, the GSB latent of `image`, the logits of `ids`."""
    with torch.no_grad():
        logits = pipe.model.prefill(ids.to(pipe.device), torch.ones_like(ids).to(pipe.device)).last_logits
    latent = pipe.encode(image)
    codes, scales = [], []
    for module in pipe.model.modules():
        weight = getattr(module, "weight", None)
        if type(module).__name__ == "Linear4bit":
            codes.append(weight.data.reshape(-1).cpu())
            scales.append(weight.quant_state.absmax.float().reshape(-1).cpu())
        elif type(module).__name__ == "Linear8bitLt":
            codes.append(weight.data.reshape(-1).cpu())
            scales.append((weight.SCB if weight.SCB is not None else module.state.SCB).float().reshape(-1).cpu())
    return {"codes": torch.cat(codes), "scale": torch.cat(scales), "latent": latent, "logits": logits.float().cpu()}


def quant_check(preset_name: str, device: str = "cuda", checkpoint: Path | None = None) -> list[dict]:
    """CPU-quantised-then-moved against CUDA-quantised, for nf4 and int8, on a random bf16 checkpoint
    (`checkpoint`, built there if it has no weights; else a temporary one). device="cpu" only dry-runs
    the code: both sides are then quantised on the CPU."""
    from bench.load_memory import build_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="hydra-quant-check-") as tmp:
        folder = checkpoint or Path(tmp) / "checkpoint"
        if not (folder / "model.safetensors").is_file():
            build_checkpoint(preset_name, folder)
        ids = torch.tensor([[1] + [20] * 16])
        for precision in ("nf4", "int8"):
            direct = HydraPipeline.from_pretrained(folder, device=device, precision=precision)
            size = direct.image_size
            image = (torch.rand(size, size, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
            reference = _quant_outputs(direct, image, ids)
            del direct
            torch.cuda.empty_cache()
            for cpu_forward in ((False, True) if precision == "nf4" else (False,)):
                start = time.perf_counter()
                staged = HydraPipeline.from_pretrained(folder, device=device, precision=precision, defer_placement=True)
                load_s = time.perf_counter() - start
                assert staged.model.llm.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
                if cpu_forward:
                    with torch.no_grad():
                        staged.model.prefill(ids, torch.ones_like(ids))
                start = time.perf_counter()
                staged.ensure_placed()
                sync(torch.device(device))
                move_s = time.perf_counter() - start
                out = _quant_outputs(staged, image, ids)
                # (shapes differ only if the CPU layout were carried to the GPU: codes and scales then all differ)
                same_shape = out["codes"].shape == reference["codes"].shape and out["scale"].shape == reference["scale"].shape
                row = {
                    "precision": precision, "cpu_forward_first": cpu_forward, "cpu_quantise_load_s": load_s,
                    "move_s": move_s,
                    "codes_differ": float((out["codes"] != reference["codes"]).float().mean()) if same_shape else 1.0,
                    "scale_max_diff": float((out["scale"] - reference["scale"]).abs().max()) if same_shape else float("inf"),
                    "latent_rel": float((out["latent"] - reference["latent"]).abs().max()
                                        / reference["latent"].abs().max()),
                    "logits_rel": float((out["logits"] - reference["logits"]).abs().max()
                                        / reference["logits"].abs().max()),
                }
                row["ok"] = all(row[k] <= limit for k, limit in QUANT_CHECK_TOLERANCE.items())
                rows.append(row)
                print(json.dumps(row), flush=True)
                del staged
                torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict], title: str) -> str:
    keys = [k for k in rows[0] if k != "precision"]
    lines = [f"### {title}", "", "| precision | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        cells = ["–" if row[k] is None else f"{row[k]:.4g}" for k in keys]
        lines.append(f"| {row['precision']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--decoder-steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quant-check", choices=["run", "skip", "only"], default="run",
                        help="on CUDA: CPU-quantised-then-moved vs CUDA-quantised, nf4 and int8 (only: just this)")
    parser.add_argument("--quant-check-checkpoint", type=Path, default=None,
                        help="the random bf16 checkpoint folder of the quantisation check (built there if missing)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = f"{args.preset}-{device.type}"
    if device.type == "cuda" and args.quant_check != "skip":
        checks = quant_check(args.preset, checkpoint=args.quant_check_checkpoint)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}-quant-check.json").write_text(json.dumps(
            {"tolerance": QUANT_CHECK_TOLERANCE, "rows": checks}, indent=2))
        print(f"CPU-quantised then moved vs CUDA-quantised: {'all within tolerance' if all(r['ok'] for r in checks) else 'OUT OF TOLERANCE'}")
        if args.quant_check == "only":
            if not all(r["ok"] for r in checks):
                raise SystemExit(1)
            return
    precisions = args.precisions or (["bf16", "fp16", "int8", "nf4"] if device.type == "cuda" else ["fp32", "bf16"])
    config = preset(args.preset)
    # Random weights need only a tokenizer with the right special tokens; the vocabulary is the config's.
    tokenizer = train_bpe(["a photo of a red circle", "warm up"], vocab_size=300)
    config.token_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    state = random_state(config, seed=0)
    rows, reference = [], None
    for precision in precisions:
        row, outputs = measure(args, config, state, tokenizer, precision, reference)
        reference = reference or outputs
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"{args.preset} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, random weights, "
             f"{config.tokenizer.image_size} px, {args.steps} flow steps, {args.decoder_steps} decoder steps; "
             f"differences against {precisions[0]}")
    (args.out / f"{name}.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    (args.out / f"{name}.md").write_text(markdown(rows, title) + "\n")
    print(markdown(rows, title))


if __name__ == "__main__":
    main()
