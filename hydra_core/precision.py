"""Device and precision placement: fp32 / bf16 / fp16 / int8 / nf4 on CPU or CUDA.

Defaults: CUDA -> bf16 (fp16 where bf16 is unsupported); CPU -> fp32.
"""

from __future__ import annotations

import torch

from .unified import HydraModel

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Numerically sensitive modules kept in float32 whatever the precision: the bottleneck whose
# latents every task shares, and the zero-initialised output layers that produce velocities.
KEEP_FP32 = ("vision.gsb", "flow_head.final", "vision.decoder.final")


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the unquantized layers: bf16 on CUDA for int8/nf4, float32 on the CPU."""
    if precision in DTYPES:
        return DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this machine has no CUDA GPU (torch sees none); "
                         "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported; use cpu or cuda")
    return device


def default_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use fp16")


def place(model: HydraModel, device: str | torch.device | None = None, precision: str | None = None,
          offload: bool = False) -> tuple[HydraModel, str]:
    """Move a float32 CPU model to `device` in `precision`; returns the model and the precision used.

    offload: keep the LLM's decoder layers in CPU memory and stream each to `device` when it runs
    (accelerate's cpu_offload hooks), for GPUs too small for the whole model; fp32/bf16/fp16 only."""
    device = resolve_device(device)
    precision = precision or default_precision(device)
    check_precision(precision, device)
    if offload and precision not in DTYPES:
        raise ValueError("offload works with fp32, bf16 or fp16; int8 / nf4 already shrink the weights")
    dtype = compute_dtype(precision, device)
    if precision not in DTYPES:
        from .quantize import quantize

        model = quantize(model, precision, device, dtype)
    model = _cast_unquantized(model, dtype)
    if offload:
        from accelerate import cpu_offload

        layers = model.llm.model.layers
        for layer in layers:
            layer.to("cpu")
        model.llm.model.layers = torch.nn.ModuleList()  # move everything else, then put the layers back
        model.to(device)
        for layer in layers:
            cpu_offload(layer, execution_device=device)
        model.llm.model.layers = layers
    else:
        model = model.to(device)
    for name in KEEP_FP32:
        model.get_submodule(name).float()
    return model.eval(), precision


def _cast_unquantized(model: HydraModel, dtype: torch.dtype) -> HydraModel:
    """Cast floating parameters and buffers to dtype, leaving bitsandbytes' packed weights alone."""
    for module in model.modules():
        if type(module).__module__.startswith("bitsandbytes"):
            if getattr(module, "bias", None) is not None:
                module.bias.data = module.bias.data.to(dtype)
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for key, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point() and "inv_freq" not in key:
                setattr(module, key, buf.to(dtype))
    return model
