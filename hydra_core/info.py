"""Parameter counts per part and weight memory per precision, from a config alone (meta device)."""

from __future__ import annotations

from .config import HydraConfig
from .loading import build_empty
from .precision import KEEP_FP32, PRECISIONS
from .quantize import quantizable_linears

PARTS = {
    "gen_vit": "vision.gen_vit.",
    "gsb": "vision.gsb.",
    "sem_vit": "vision.sem_vit.",
    "pixel_decoder": "vision.decoder.",
    "projector": "projector.",
    "llm": "llm.",
    "image_positions": "image_position",  # only in checkpoints with image_position_embedding
    "flow_head": "flow_head.",
}
# Bytes per parameter. nf4: 4-bit codes plus one float32 absmax per 64-value block.
QUANT_BYTES = {"int8": 1.0, "nf4": 0.5 + 4 / 64}
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 2, "nf4": 2}  # unquantized layers (CUDA compute dtype)


def report(config: HydraConfig) -> dict:
    model = build_empty(config)
    params = dict(model.named_parameters())  # tied LM head counted once
    counts = {part: sum(p.numel() for n, p in params.items() if n.startswith(prefix)) for part, prefix in PARTS.items()}
    counts = {part: count for part, count in counts.items() if count}
    counts["total"] = sum(p.numel() for p in params.values())
    quantized = {f"{name}.weight" for name in quantizable_linears(model)}
    memory = {}
    for precision in PRECISIONS:
        total = 0.0
        for name, p in params.items():
            if name.startswith(KEEP_FP32):
                total += 4 * p.numel()
            elif name in quantized and precision in QUANT_BYTES:
                total += QUANT_BYTES[precision] * p.numel() + (4 * p.shape[0] if precision == "int8" else 0)
            else:
                total += FLOAT_BYTES[precision] * p.numel()
        memory[precision] = int(total)
    return {"preset": config.preset, "parameters": counts, "weight_bytes": memory,
            "image_tokens": config.tokenizer.num_tokens, "latent_channels": config.tokenizer.latent_channels}


def format_report(info: dict) -> str:
    lines = [f"HYDRA preset {info['preset']}: {info['image_tokens']} image tokens x {info['latent_channels']} channels",
             "", "| part | parameters |", "|---|---:|"]
    lines += [f"| {part} | {count:,} |" for part, count in info["parameters"].items()]
    lines += ["", "| precision | weight memory |", "|---|---:|"]
    lines += [f"| {p} | {b / 2**30:.3f} GiB |" if b >= 2**30 else f"| {p} | {b / 2**20:.1f} MiB |"
              for p, b in info["weight_bytes"].items()]
    return "\n".join(lines)
