"""Precision and placement on the CPU: every precision's outputs stay close to fp32's."""

import pytest
import torch

from hydra_core.loading import load_pretrained
from hydra_core.pipeline import HydraPipeline
from hydra_core.precision import place

# Largest difference from fp32, relative to the largest fp32 value. bf16 keeps 8 bits of mantissa,
# fp16 11; int8 (LLM.int8 with outliers in fp16) and nf4 (4-bit codes) are lossy by design.
TOLERANCE = {"bf16": 0.05, "fp16": 0.01, "int8": 0.05, "nf4": 0.25}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    from hydra_core.data import shapesworld as sw
    import numpy as np

    image = sw.render(sw.sample_scene(np.random.default_rng(0)))
    ids = torch.tensor([[1, 11, 12, 13]])
    with torch.no_grad():
        logits = tiny_pipeline.model.prefill(ids, torch.ones_like(ids)).last_logits
    generated = tiny_pipeline.generate("a photo of a red circle", steps=3, decoder_steps=2, seed=0).latents
    return {"image": image, "latent": tiny_pipeline.encode(image), "logits": logits, "generated": generated, "ids": ids}


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
def test_outputs_stay_close_to_fp32(tiny_checkpoint, reference, precision):
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision=precision)
    assert pipe.precision == precision
    tol = TOLERANCE[precision]
    assert _relative_error(pipe.encode(reference["image"]), reference["latent"]) < tol
    with torch.no_grad():
        logits = pipe.model.prefill(reference["ids"], torch.ones_like(reference["ids"])).last_logits
    assert _relative_error(logits, reference["logits"]) < tol
    generated = pipe.generate("a photo of a red circle", steps=3, decoder_steps=2, seed=0).latents
    assert torch.isfinite(generated).all()
    assert _relative_error(generated, reference["generated"]) < 2 * tol
    # The bottleneck and the velocity output layers stay in float32.
    assert pipe.model.vision.gsb.proj.weight.dtype == torch.float32
    assert pipe.model.flow_head.final.linear.weight.dtype == torch.float32


@pytest.mark.parametrize("precision, layer_type", [("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_quantized_precisions_use_bitsandbytes_layers(tiny_checkpoint, precision, layer_type):
    model, used = place(load_pretrained(tiny_checkpoint).model, device="cpu", precision=precision)
    names = {type(m).__name__ for m in model.modules()}
    assert used == precision and layer_type in names
    assert type(model.llm.lm_head).__name__ == "Linear"  # the LM head is never quantized
    assert type(model.vision.gen_vit.layers[0].mlp.fc1).__name__ == layer_type


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


def test_deferred_placement_quantizes_at_the_first_model_call(tiny_checkpoint, reference):
    """ZeroGPU: bitsandbytes loads must happen inside the GPU function, i.e. at the first call."""
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision="nf4", defer_placement=True)
    assert type(pipe.model.vision.gen_vit.layers[0].mlp.fc1).__name__ == "Linear"
    latent = pipe.encode(reference["image"])
    assert type(pipe.model.vision.gen_vit.layers[0].mlp.fc1).__name__ == "Linear4bit"
    assert pipe.precision == "nf4"
    assert _relative_error(latent, reference["latent"]) < TOLERANCE["nf4"]


def test_offloaded_llm_layers_give_the_same_outputs(tiny_checkpoint, reference):
    """accelerate's CPU-offload hooks on the LLM layers (here executing on the CPU itself)."""
    pipe = HydraPipeline.from_pretrained(tiny_checkpoint, device="cpu", precision="fp32", offload=True)
    assert hasattr(pipe.model.llm.model.layers[0], "_hf_hook")
    with torch.no_grad():
        logits = pipe.model.prefill(reference["ids"], torch.ones_like(reference["ids"])).last_logits
    assert torch.allclose(logits, reference["logits"], atol=1e-5)
    generated = pipe.generate("a photo of a red circle", steps=3, decoder_steps=2, seed=0).latents
    assert torch.allclose(generated, reference["generated"], atol=1e-4)
    with pytest.raises(ValueError, match="offload"):
        place(load_pretrained(tiny_checkpoint).model, device="cpu", precision="nf4", offload=True)
