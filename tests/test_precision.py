"""Precision and placement on the CPU: every precision's outputs stay close to fp32's."""

import pytest
import torch

from hydra_core.loading import load_pretrained
from hydra_core.pipeline import HydraPipeline
from hydra_core.precision import place

PROMPT, OTHER_PROMPT = "a photo of a red circle", "two blue squares on the left"

# Each precision's distance from fp32, as a fraction of an input-blind control measured in the same
# test: how far fp32 itself moves when the input changes (another image for the latent, another prompt
# for the logits and for the generated latent). A precision that lost the input would sit near 1.
# Measured on the tiny random model (latent, logits, generation):
#   bf16 0.008, 0.010, 0.12   fp16 0.001, 0.0013, 0.016   int8 0.002, 0.024, 0.14   nf4 0.015, 0.27, 0.68
# nf4's 4-bit codes (blocks of 64 on layers 64-256 wide) move a generation by two thirds of a prompt
# change; the prompt's own effect is kept (cosine 0.97 with fp32's, checked below).
LIMITS = {"bf16": (0.03, 0.04, 0.35), "fp16": (0.005, 0.005, 0.05), "int8": (0.01, 0.08, 0.4),
          "nf4": (0.05, 0.6, 1.0)}


def _distance(output: torch.Tensor, reference: torch.Tensor, control: torch.Tensor) -> float:
    """|output - reference| / |control - reference| (L2): the error in units of the input's effect."""
    return float((output.float() - reference).norm() / (control - reference).norm())


def _generate(pipe, prompt: str) -> torch.Tensor:
    return pipe.generate(prompt, steps=3, decoder_steps=2, seed=0).latents


def _logits(pipe, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pipe.model.prefill(ids, torch.ones_like(ids)).last_logits


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    """fp32 outputs, and each one's control: the same output for another input."""
    from hydra_core.data import shapesworld as sw
    import numpy as np

    rng = np.random.default_rng(0)
    image, other_image = sw.render(sw.sample_scene(rng)), sw.render(sw.sample_scene(rng))
    ids, other_ids = torch.tensor([[1, 11, 12, 13]]), torch.tensor([[1, 14, 15, 16]])
    return {"image": image, "latent": tiny_pipeline.encode(image), "other_latent": tiny_pipeline.encode(other_image),
            "ids": ids, "logits": _logits(tiny_pipeline, ids), "other_logits": _logits(tiny_pipeline, other_ids),
            "generated": _generate(tiny_pipeline, PROMPT), "other_generated": _generate(tiny_pipeline, OTHER_PROMPT)}


@pytest.mark.parametrize("precision", sorted(LIMITS))
def test_outputs_stay_closer_to_fp32_than_another_input_moves_them(tiny_checkpoint, reference, precision):
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision=precision)
    assert pipe.precision == precision
    latent_limit, logits_limit, generated_limit = LIMITS[precision]
    r = reference
    assert _distance(pipe.encode(r["image"]), r["latent"], r["other_latent"]) < latent_limit
    assert _distance(_logits(pipe, r["ids"]), r["logits"], r["other_logits"]) < logits_limit
    generated, other = _generate(pipe, PROMPT), _generate(pipe, OTHER_PROMPT)
    assert torch.isfinite(generated).all()
    assert _distance(generated, r["generated"], r["other_generated"]) < generated_limit
    # The prompt moves this precision's generation the way it moves fp32's (an ignored prompt gives 0).
    effect, fp32_effect = (generated - other).flatten(), (r["generated"] - r["other_generated"]).flatten()
    assert float(torch.nn.functional.cosine_similarity(effect, fp32_effect, dim=0)) > 0.9
    # The bottleneck and the velocity output layers stay in float32.
    assert pipe.model.vision.gsb.proj.weight.dtype == torch.float32
    assert pipe.model.flow_head.final.linear.weight.dtype == torch.float32


def test_quantized_weights_really_are_int8_and_packed_4_bit(tiny_checkpoint):
    """Not just the layer classes: the stored weights are int8 codes (LLM.int8, one scale per row) or
    4-bit NF4 codes packed two per byte with their quantization state."""
    fp32 = load_pretrained(tiny_checkpoint).model
    reference = fp32.vision.gen_vit.layers[0].mlp.fc1.weight.detach().clone()
    int8, used = place(load_pretrained(tiny_checkpoint).model, device="cpu", precision="int8")
    assert used == "int8"
    layer = int8.vision.gen_vit.layers[0].mlp.fc1
    assert type(layer).__name__ == "Linear8bitLt" and layer.weight.dtype == torch.int8
    assert layer.weight.shape == reference.shape and layer.weight.SCB.shape == (reference.shape[0],)
    # Dequantized codes give back the float weights (to int8 rounding: half a step of absmax / 127).
    dequantized = layer.weight.float() * layer.weight.SCB[:, None] / 127
    assert (dequantized - reference).abs().max() <= reference.abs().max() / 127
    assert len(torch.unique(layer.weight)) > 128  # real codes, not a constant

    nf4, used = place(load_pretrained(tiny_checkpoint).model, device="cpu", precision="nf4")
    assert used == "nf4"
    layer = nf4.vision.gen_vit.layers[0].mlp.fc1
    assert type(layer).__name__ == "Linear4bit" and layer.weight.dtype == torch.uint8
    assert layer.weight.numel() == reference.numel() // 2  # two 4-bit codes per byte
    assert layer.weight.quant_state.quant_type == "nf4" and tuple(layer.weight.quant_state.shape) == reference.shape
    import bitsandbytes.functional as bnbf

    dequantized = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    error = (dequantized - reference).abs().max()
    assert error < 0.25 * reference.abs().max() and error > 0  # lossy, but the same weights

    for model in (int8, nf4):
        assert type(model.llm.lm_head).__name__ == "Linear"  # the LM head is never quantized
        assert model.llm.lm_head.weight.dtype == torch.float32


def test_defaults_and_clear_errors(tiny_checkpoint):
    model = load_pretrained(tiny_checkpoint).model
    _, used = place(model, device="cpu")
    assert used == "fp32"  # the CPU default
    with pytest.raises(ValueError, match="unknown"):
        place(model, device="cpu", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            place(model, device="cuda")
    with pytest.raises(ValueError, match="not supported"):
        place(model, device="meta")


def test_deferred_placement_quantizes_at_load_and_moves_at_the_first_model_call(tiny_checkpoint, reference):
    """ZeroGPU: CUDA exists only inside GPU calls, so the weights are quantised on the CPU when loaded and
    the first model call only moves them (tests/test_lean_loading.py counts that nothing is re-quantised)."""
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision="nf4", defer_placement=True)
    assert type(pipe.model.vision.gen_vit.layers[0].mlp.fc1).__name__ == "Linear4bit"
    assert pipe._pending_placement == torch.device("cpu")
    latent = pipe.encode(reference["image"])
    assert pipe._pending_placement is None
    assert pipe.precision == "nf4"
    assert _distance(latent, reference["latent"], reference["other_latent"]) < LIMITS["nf4"][0]
    assert pipe.model.vision.gen_vit.layers[0].mlp.fc1.weight.dtype == torch.uint8  # packed 4-bit codes


def test_offloaded_llm_layers_give_the_same_outputs(tiny_checkpoint, reference):
    """accelerate's CPU-offload hooks on the LLM layers: their weights are not resident (meta tensors,
    streamed in from the hook's CPU copy at each call) and the outputs equal fp32's. Here the execution
    device is the CPU itself; the CUDA test below covers CPU-to-GPU streaming where a GPU exists."""
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision="fp32", offload=True)
    layer = pipe.model.llm.model.layers[0]
    assert layer.self_attn.q_proj.weight.device.type == "meta"
    assert layer.self_attn.q_proj._hf_hook.offload
    logits = _logits(pipe, reference["ids"])
    assert torch.allclose(logits, reference["logits"], atol=1e-5)
    assert layer.self_attn.q_proj.weight.device.type == "meta"  # released again after the call
    generated = _generate(pipe, PROMPT)
    assert torch.allclose(generated, reference["generated"], atol=1e-4)
    with pytest.raises(ValueError, match="offload"):
        place(load_pretrained(tiny_checkpoint).model, device="cpu", precision="nf4", offload=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offload_streams_llm_layers_from_cpu_to_the_gpu(tiny_checkpoint, reference):
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cuda", precision="fp32", offload=True)
    layer = pipe.model.llm.model.layers[0]
    assert layer.self_attn.q_proj.weight.device.type == "meta"
    assert layer.self_attn.q_proj._hf_hook.execution_device in ("cuda", torch.device("cuda"), 0, torch.device("cuda:0"))
    assert pipe.model.projector[1].weight.device.type == "cuda"  # the rest lives on the GPU
    logits = _logits(pipe, reference["ids"].cuda()).cpu()
    assert _distance(logits, reference["logits"], reference["other_logits"]) < 0.01


def test_int8_matmuls_log_no_cast_notice(tiny_checkpoint, reference, caplog):
    """bitsandbytes logs (through logging, not warnings) on each int8 matmul that float32 inputs are cast
    to float16: expected on the CPU, so quantize() filters that line out of its logger."""
    import logging

    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision="int8")
    with caplog.at_level(logging.DEBUG):
        pipe.encode(reference["image"])
        logging.getLogger("bitsandbytes.autograd._functions").warning("another bitsandbytes warning")
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "MatMul8bitLt" in m], messages[:3]
    assert "another bitsandbytes warning" in messages  # only that notice is dropped
