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
# The flow space's whitening (models with latent_norm "pca") too: its basis maps every latent in and out.
KEEP_FP32 = ("vision.gsb", "flow_head.final", "vision.decoder.final", "latent_whitening")


def kept_fp32_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The KEEP_FP32 modules this model has (latent_whitening exists only with latent_norm "pca")."""
    names = {name for name, _ in model.named_modules()}
    return [model.get_submodule(name) for name in KEEP_FP32 if name in names]


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


def is_quantized(model: torch.nn.Module) -> bool:
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def weight_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the floating tensor `name` (a state-dict key) when the model runs in `dtype`."""
    return torch.float32 if name.startswith(tuple(m + "." for m in KEEP_FP32)) else dtype


def place(model: HydraModel, device: str | torch.device | None = None, precision: str | None = None,
          offload: bool = False) -> tuple[HydraModel, str]:
    """Move an already loaded CPU model (float32, e.g. one being trained) to `device` in `precision`; returns
    the model and the precision used. A checkpoint on disk is better loaded straight into its precision
    and device with loading.load_pretrained, which never holds a float32 copy.

    offload: keep the LLM's decoder layers in CPU memory and stream each to `device` when it runs
    (accelerate's cpu_offload hooks), for GPUs too small for the whole model; fp32/bf16/fp16 only."""
    device, precision = resolve(device, precision, offload)
    dtype = compute_dtype(precision, device)
    if precision not in DTYPES:
        from .quantize import quantize

        model = quantize(model, precision, device, dtype)
    for module in kept_fp32_modules(model):
        module.float()
    model = _cast_unquantized(model, dtype)
    return move(model, device, offload).eval(), precision


def resolve(device: str | torch.device | None, precision: str | None, offload: bool = False) -> tuple[torch.device, str]:
    """The device and precision to use (defaults filled in), or a ValueError saying why not."""
    device = resolve_device(device)
    precision = precision or default_precision(device)
    check_precision(precision, device)
    if offload and precision not in DTYPES:
        raise ValueError("offload works with fp32, bf16 or fp16; int8 / nf4 already shrink the weights")
    return device, precision


def move(model: HydraModel, device: torch.device, offload: bool = False) -> HydraModel:
    """Move a model whose tensors already have their final dtypes (and, quantised, their packed codes) to
    `device`; tensors already there stay as they are. offload: see `place`."""
    if not offload:
        if is_quantized(model):
            from .quantize import move_packed

            return move_packed(model, device)
        return model.to(device)
    from accelerate import cpu_offload

    layers = model.llm.model.layers
    for layer in layers:
        layer.to("cpu")
    model.llm.model.layers = torch.nn.ModuleList()  # move everything else, then put the layers back
    model.to(device)
    for layer in layers:
        cpu_offload(layer, execution_device=device)
    model.llm.model.layers = layers
    return model


def _cast_unquantized(model: HydraModel, dtype: torch.dtype) -> HydraModel:
    """Cast floating parameters and buffers to dtype, leaving bitsandbytes' packed weights, the rotary
    frequencies and the KEEP_FP32 modules alone (tensors already in dtype are not copied)."""
    keep = {id(m) for kept in kept_fp32_modules(model) for m in kept.modules()}
    for module in model.modules():
        if id(module) in keep:
            continue
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
