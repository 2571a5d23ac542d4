"""bitsandbytes int8 / nf4 for the LLM and the ViT halves.

What is quantized: every plain nn.Linear of the model (the LLM's blocks, the Gen-ViT / Sem-ViT
blocks, the projector, the flow head's and the pixel decoder's blocks), except the numerically
sensitive ones: the LM head (as transformers' BitsAndBytesConfig skips it by default), the GSB,
the timestep embeddings and the two velocity output layers. Embeddings, norms and attention inside
nn.MultiheadAttention stay in the compute dtype (bf16 on CUDA, fp32 on CPU); the GSB and the output
layers stay in float32 (precision.KEEP_FP32).
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn
from transformers import BitsAndBytesConfig

MIN_IN_FEATURES = 128
SKIPPED = ("llm.lm_head", "vision.gsb.", "t_embedder.", "flow_head.final.", "vision.decoder.final.")


def quantizable_linears(model: nn.Module) -> list[str]:
    # `type(...) is nn.Linear` also leaves out nn.MultiheadAttention's out_proj, which that module
    # multiplies by its raw weight. Narrow inputs (the C-channel latent projections) stay unquantized:
    # they save nothing and bitsandbytes' CPU 4-bit kernel rejects them.
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and module.in_features >= MIN_IN_FEATURES
            and not any(s in name + "." for s in SKIPPED)]


def bnb_config(precision: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_skip_modules=["lm_head"])
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=False, llm_int8_skip_modules=["lm_head"])


class _DropCastNotice(logging.Filter):
    """bitsandbytes logs (logging, not warnings) on every int8 matmul that float32 inputs are cast to
    float16 (24 lines per encode of the tiny model); that cast is expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_CAST_FILTER = _DropCastNotice()


def replace_linears(model: nn.Module, precision: str, compute_dtype: torch.dtype) -> tuple[BitsAndBytesConfig, list[str]]:
    """Swap the quantizable linears for empty bitsandbytes layers (transformers' replace_with_bnb_linear,
    told to leave every other linear alone); returns the config and the swapped layers' names. Their weights
    are then given one layer at a time with `fill_weight`, by `quantize` or by the streaming loader."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ValueError(f"precision {precision} needs the bitsandbytes package (pip install bitsandbytes)") from error
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    config = bnb_config(precision, compute_dtype)
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_CAST_FILTER)
    names = quantizable_linears(model)
    keep = set(names)
    others = [re.escape(name) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name not in keep]
    replace_with_bnb_linear(model, modules_to_not_convert=others, quantization_config=config)
    return config, names


def fill_weight(layer: nn.Module, weight: torch.Tensor, config: BitsAndBytesConfig, compute_dtype: torch.dtype,
                device: torch.device) -> None:
    """Give a bitsandbytes layer its float weight, quantised as it moves to `device` (bitsandbytes quantises in
    Params.to). Only this layer's weight exists in half precision (float32 for nf4 on the CPU) meanwhile."""
    import bitsandbytes as bnb

    weight = weight.to(torch.float16 if config.load_in_8bit else compute_dtype)
    if config.load_in_8bit:
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
    else:
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=config.bnb_4bit_quant_type,
                                         compress_statistics=config.bnb_4bit_use_double_quant, module=layer).to(device)


def quantize(model: nn.Module, precision: str, device: torch.device, compute_dtype: torch.dtype) -> nn.Module:
    """Quantise an already loaded model's linears onto `device`, layer by layer (precision.place; loading a
    checkpoint quantises straight from the file instead, see loading.load_pretrained). The rest of the model
    stays where it is, for the caller to cast and move."""
    linears = {name: model.get_submodule(name) for name in quantizable_linears(model)}
    config, _ = replace_linears(model, precision, compute_dtype)
    for name, linear in linears.items():
        layer = model.get_submodule(name)
        fill_weight(layer, linear.weight.data, config, compute_dtype, device)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data.to(device, compute_dtype), requires_grad=False)
    return model


def move_packed(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model whose bitsandbytes weights are already quantised; nothing is quantised again
    (Params4bit.to and Int8Params.to only move packed codes and their statistics once quantised).

    bitsandbytes repacks 4-bit weights into a CPU-only layout at their first forward pass on an AVX-512
    BF16 CPU; that layout is undone (with bitsandbytes' own inverse) before the weights leave the CPU."""
    if device.type != "cpu":
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Params4bit

        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, Params4bit) and getattr(weight.quant_state, "packing_format_for_cpu", False):
                weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
                module.quant_state = weight.quant_state
    model = model.to(device)
    from bitsandbytes.nn import Int8Params

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, Int8Params) and weight.CB is not None:
            # Module.to swaps the parameter's .data, but Int8Params keeps its codes and row scales in
            # attributes beside it (until the layer's first forward moves them into its state).
            weight.CB = weight.data
            weight.SCB = weight.SCB.to(device)
    return model
