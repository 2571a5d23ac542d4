"""bitsandbytes int8 / nf4 for the LLM and the ViT halves.

What is quantized: every plain nn.Linear of the model (the LLM's blocks, the Gen-ViT / Sem-ViT
blocks, the projector, the flow head's and the pixel decoder's blocks), except the numerically
sensitive ones: the LM head (as transformers' BitsAndBytesConfig skips it by default), the GSB,
the timestep embeddings and the two velocity output layers. Embeddings, norms and attention inside
nn.MultiheadAttention stay in the compute dtype (bf16 on CUDA, fp32 on CPU); the GSB and the output
layers stay in float32 (precision.KEEP_FP32).
"""

from __future__ import annotations

import warnings

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


def _quantized_linear(linear: nn.Linear, config: BitsAndBytesConfig, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    weight = linear.weight.data.to(torch.float16 if config.load_in_8bit else compute_dtype)
    if config.load_in_8bit:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, threshold=config.llm_int8_threshold)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=compute_dtype, quant_type=config.bnb_4bit_quant_type)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=config.bnb_4bit_quant_type)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    return layer


def quantize(model: nn.Module, precision: str, device: torch.device, compute_dtype: torch.dtype) -> nn.Module:
    """Replace the quantizable linears by bitsandbytes layers; the weights are quantized when the
    layers move to `device`."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ValueError(f"precision {precision} needs the bitsandbytes package (pip install bitsandbytes)") from error
    config = bnb_config(precision, compute_dtype)
    # bitsandbytes warns on every int8 matmul that float32 inputs are cast to float16; that is expected.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    for name in quantizable_linears(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _quantized_linear(getattr(parent, child), config, compute_dtype))
    return model.to(device)
