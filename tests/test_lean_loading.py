"""Loading straight into the precision asked for: tensor by tensor from the file, no float32 model copy,
quantised once (tiny random models, CPU)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

from hydra_core.loading import load_pretrained, save_pretrained
from hydra_core.pipeline import HydraPipeline
from hydra_core.precision import KEEP_FP32


@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_model, text_tokenizer, tmp_path_factory):
    """The tiny random model saved with bf16 weights, as large checkpoints usually are."""
    path = tmp_path_factory.mktemp("hydra-tiny-bf16")
    save_pretrained(tiny_model, text_tokenizer, path, dtype=torch.bfloat16)
    return path


def _keep_fp32(name: str) -> bool:
    return name.startswith(tuple(m + "." for m in KEEP_FP32))


class _Float32Outputs(TorchDispatchMode):
    """Adds up the bytes of every float32 tensor that a torch operation fills while active. torch.empty is
    left out: accelerate's init_empty_weights makes each parameter with it, untouched, before moving it to
    the meta device."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.startswith("empty"):
            return out
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.device.type != "meta":
                self.bytes += tensor.numel() * 4
        return out


def test_bf16_loads_as_bf16_with_the_files_values(bf16_checkpoint):
    model = load_pretrained(bf16_checkpoint, device="cpu", precision="bf16").model
    state = model.state_dict()
    with safe_open(bf16_checkpoint / "model.safetensors", framework="pt") as file:
        names = [k for k in file.keys() if not k.startswith("viz.")]
        assert set(names) == set(state) - {"llm.lm_head.weight"}  # tied: not stored
        for name in names:
            stored, loaded = file.get_tensor(name), state[name]
            assert loaded.dtype == (torch.float32 if _keep_fp32(name) else torch.bfloat16), name
            assert torch.equal(loaded, stored.to(loaded.dtype)), name
    assert model.llm.lm_head.weight is model.llm.model.embed_tokens.weight
    assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32  # as precision.place leaves it


def test_no_float32_copy_of_the_model_is_made(bf16_checkpoint, tiny_model):
    """The float32 tensors filled while a bf16 file loads in bf16: the KEEP_FP32 modules (2.4% of this model)
    and small things (rotary frequencies, the PCA basis), never the model (the old loader upcast every
    tensor to float32 first: 103% of the model in float32)."""
    fp32_model = sum(p.numel() * 4 for p in tiny_model.parameters())
    allowed = sum(p.numel() * 4 for n, p in tiny_model.named_parameters() if _keep_fp32(n)) + 0.05 * fp32_model
    with _Float32Outputs() as spy:
        pipe = HydraPipeline.from_pretrained(bf16_checkpoint, device="cpu", precision="bf16")
    assert pipe.model.projector[1].weight.dtype == torch.bfloat16
    assert spy.bytes <= allowed, f"{spy.bytes / 2**20:.1f} MiB of float32 made (model in float32: {fp32_model / 2**20:.1f} MiB)"


def test_offloaded_layers_are_kept_in_the_precision(bf16_checkpoint):
    pipe = HydraPipeline.from_pretrained(bf16_checkpoint, device="cpu", precision="bf16", offload=True)
    hook = pipe.model.llm.model.layers[0].self_attn.q_proj._hf_hook
    assert hook.offload and hook.weights_map["weight"].dtype == torch.bfloat16
    ids = torch.tensor([[1, 11, 12]])
    with torch.no_grad():
        assert torch.isfinite(pipe.model.prefill(ids, torch.ones_like(ids)).last_logits).all()


@pytest.mark.parametrize("precision, quantizer", [("nf4", "quantize_4bit"), ("int8", "int8_vectorwise_quant")])
def test_quantised_loads_quantise_once_at_load(bf16_checkpoint, monkeypatch, precision, quantizer):
    """Quantised from the file's tensors while loading. With defer_placement (ZeroGPU's path) that happens
    on the CPU at load, and the first model call only moves the packed weights: nothing is quantised again."""
    import bitsandbytes.functional as bnbf

    calls = []
    original = getattr(bnbf, quantizer)

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(bnbf, quantizer, counted)
    pipe = HydraPipeline.from_pretrained(bf16_checkpoint, device="cpu", precision=precision, defer_placement=True)
    at_load = len(calls)
    assert at_load > 0  # quantised while loading
    layer = pipe.model.llm.model.layers[0].mlp.up_proj
    assert type(layer).__name__ == {"nf4": "Linear4bit", "int8": "Linear8bitLt"}[precision]
    assert layer.weight.dtype == {"nf4": torch.uint8, "int8": torch.int8}[precision]
    assert pipe.num_parameters == sum(p.numel() for p in load_pretrained(bf16_checkpoint).model.parameters())
    codes = layer.weight.detach().clone()
    pipe.ensure_placed()
    assert len(calls) == at_load  # the move quantised nothing
    assert torch.equal(pipe.model.llm.model.layers[0].mlp.up_proj.weight, codes)
    if precision == "nf4":  # (int8's matmul quantises its activations with the same function)
        out = pipe.generate("a photo of a red circle", steps=1, decoder_steps=1, seed=0)
        assert torch.isfinite(out.latents).all() and out.images[0].size == (pipe.image_size, pipe.image_size)
        assert len(calls) == at_load


def test_bad_files_get_the_same_errors_in_every_precision(tiny_checkpoint, tmp_path):
    def folder(name):
        copy = tmp_path / name
        shutil.copytree(tiny_checkpoint, copy)
        return copy

    disguised, truncated = folder("disguised"), folder("truncated")
    torch.save({"x": torch.zeros(1)}, disguised / "model.safetensors")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 3])
    for precision in ("bf16", "nf4"):
        with pytest.raises(ValueError, match="model.safetensors is a pickle .* safetensors only"):
            load_pretrained(disguised, device="cpu", precision=precision)
        with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
            load_pretrained(truncated, device="cpu", precision=precision)
    with pytest.raises(ValueError, match="offload works with fp32, bf16 or fp16"):
        load_pretrained(tiny_checkpoint, device="cpu", precision="nf4", offload=True)
