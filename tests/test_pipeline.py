"""Checkpoints and the pipeline: round trips, refusals, seeds, generation, reconstruction, chat."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hydra_core.loading import load_pretrained


def test_save_load_round_trip_is_exact(tiny_checkpoint, tiny_model):
    ckpt = load_pretrained(tiny_checkpoint)
    own, loaded = tiny_model.state_dict(), ckpt.model.state_dict()
    assert own.keys() == loaded.keys()
    assert all(torch.equal(own[k], loaded[k]) for k in own)
    assert ckpt.model.llm.lm_head.weight is ckpt.model.llm.model.embed_tokens.weight  # tied again
    assert ckpt.basis is not None and ckpt.tokenizer.chat_template
    with torch.no_grad():  # same weights; memory layout may change float rounding in the last bit
        ids = torch.tensor([[1, 11, 12]])
        assert torch.allclose(tiny_model.prefill(ids, torch.ones_like(ids)).last_logits,
                              ckpt.model.prefill(ids, torch.ones_like(ids)).last_logits, rtol=0, atol=1e-5)


def test_pickle_weights_are_refused(tiny_checkpoint, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        load_pretrained(folder)
    with pytest.raises(ValueError, match="pickle"):
        load_pretrained(folder / "pytorch_model.bin")


def test_missing_files_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hub id"):
        load_pretrained(tmp_path / "nowhere")
    folder = tmp_path / "noconfig"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(folder)


def test_config_that_does_not_match_the_weights(tiny_checkpoint, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["tokenizer"]["latent_channels"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"shape does not match config.json.*checkpoint \(32"):
        load_pretrained(folder)
    # A tensor missing from the weights is named too.
    folder2 = tmp_path / "missing"
    shutil.copytree(tiny_checkpoint, folder2)
    state = load_file(folder2 / "model.safetensors")
    state.pop("flow_head.input_proj.weight")
    save_file(state, folder2 / "model.safetensors")
    with pytest.raises(ValueError, match="missing.*flow_head.input_proj.weight"):
        load_pretrained(folder2)


def test_generate_shapes_seeds_and_trajectory(tiny_pipeline):
    cfg = tiny_pipeline.config.tokenizer
    out = tiny_pipeline.generate("a photo of a red circle", num_images=3, steps=3, seed=10, decoder_steps=2,
                                 return_trajectory=True)
    assert out.seeds == [10, 11, 12]
    assert len(out.images) == 3 and out.images[0].size == (cfg.image_size, cfg.image_size)
    assert out.latents.shape == (3, cfg.num_tokens, cfg.latent_channels)
    assert len(out.trajectory) == 3 and out.trajectory[-1]["t"] == 0.0
    assert torch.equal(out.trajectory[-1]["latent"], out.latents)
    # Image k of a batch equals a single-image run with the seed reported for it.
    single = tiny_pipeline.generate("a photo of a red circle", num_images=1, steps=3, seed=11, decoder_steps=2)
    assert torch.allclose(single.latents[0], out.latents[1], atol=1e-5)
    diff = np.abs(np.asarray(single.images[0], dtype=int) - np.asarray(out.images[1], dtype=int))
    assert diff.max() <= 1


def test_generation_depends_on_prompt_and_seed_and_is_deterministic(tiny_pipeline):
    kwargs = dict(steps=3, decoder_steps=2, guidance=3.0)
    a = tiny_pipeline.generate("a photo of a red circle", seed=1, **kwargs).latents
    assert torch.equal(a, tiny_pipeline.generate("a photo of a red circle", seed=1, **kwargs).latents)
    assert not torch.allclose(a, tiny_pipeline.generate("a photo of a blue star", seed=1, **kwargs).latents)
    assert not torch.allclose(a, tiny_pipeline.generate("a photo of a red circle", seed=2, **kwargs).latents)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "empty"),
    (dict(prompt="x" * 600), "characters"),
    (dict(prompt="a circle", num_images=9), "num_images"),
    (dict(prompt="a circle", steps=0), "steps"),
    (dict(prompt="a circle", guidance=-1.0), "guidance"),
])
def test_bad_generation_input_raises_clear_errors(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.generate(**kwargs)


def test_reconstruct_reports_metrics_and_accepts_many_image_types(tiny_pipeline, tmp_path):
    from hydra_core.data import shapesworld as sw

    image = sw.render(sw.sample_scene(np.random.default_rng(0)), size=100)  # resized by the pipeline
    out = tiny_pipeline.reconstruct(image, steps=2)
    size = tiny_pipeline.image_size
    assert out.reconstruction.size == out.original.size == (size, size)
    assert out.latent.shape == (tiny_pipeline.config.tokenizer.num_tokens, tiny_pipeline.config.tokenizer.latent_channels)
    assert 0 < out.psnr < 100 and -1 <= out.ssim <= 1
    path = tmp_path / "scene.png"
    out.original.save(path)
    again = tiny_pipeline.reconstruct(path, steps=2)
    assert torch.allclose(again.latent, out.latent, atol=1e-5)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        tiny_pipeline.reconstruct(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least 8x8"):
        tiny_pipeline.reconstruct(np.zeros((4, 4, 3), dtype=np.uint8))


def _greedy_reply(pipe, messages, max_new_tokens: int) -> str:
    """Greedy decoding written out step by step, independently of chat()'s streaming."""
    from hydra_core.config import EOS_TOKEN

    input_ids, mask, _ = pipe._chat_inputs(messages)
    prefix = pipe.model.prefill(input_ids, mask)
    tokens = []
    for _ in range(max_new_tokens):
        token = int(prefix.last_logits[0].argmax())
        if token == pipe.tokenizer.convert_tokens_to_ids(EOS_TOKEN):
            break
        tokens.append(token)
        pipe.model.decode_step(torch.tensor([token]), prefix)
    return pipe.tokenizer.decode(tokens, skip_special_tokens=True)


def test_closing_the_chat_stream_stops_generating(tiny_pipeline, monkeypatch):
    """The app's Stop closes the generator: no token is computed after the piece it stopped at."""
    steps = []
    decode_step = tiny_pipeline.model.decode_step
    monkeypatch.setattr(tiny_pipeline.model, "decode_step", lambda *a: steps.append(1) or decode_step(*a))
    question = [{"role": "user", "content": "how many circles are there?"}]
    full = list(tiny_pipeline.chat(question, max_new_tokens=24))
    full_steps = len(steps)
    assert len(full) >= 3 and full_steps >= 20  # control: left alone, it runs (almost) to max_new_tokens
    steps.clear()
    stream = tiny_pipeline.chat(question, max_new_tokens=24)
    first = next(stream)
    stream.close()
    taken = len(steps)
    assert first == full[0] and taken < full_steps // 3  # stopped at the first piece, not after the reply
    with pytest.raises(StopIteration):
        next(stream)
    assert len(steps) == taken  # nothing ran after close


def test_chat_streams_text_and_uses_the_image(tiny_pipeline):
    from PIL import Image

    red = Image.new("RGB", (64, 64), (220, 30, 30))
    blue = Image.new("RGB", (64, 64), (30, 30, 220))

    def ask(image):
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                  {"type": "text", "text": "what color is the square?"}]}]
        input_ids, mask, images = tiny_pipeline._chat_inputs(messages)
        latents = tiny_pipeline.encode(images)
        return tiny_pipeline.model.prefill(input_ids, mask, latents).last_logits

    assert not torch.allclose(ask(red), ask(blue))  # the answer's distribution depends on the image
    question = [{"role": "user", "content": "how many circles are there?"}]
    pieces = list(tiny_pipeline.chat(question, max_new_tokens=12))
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)  # streamed, not one lump
    assert "".join(pieces) == _greedy_reply(tiny_pipeline, question, 12)  # the text of the model's own tokens
    multi = [{"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "what color?"}]},
             {"role": "assistant", "content": "red"}, {"role": "user", "content": "how many?"}]
    sampled = tiny_pipeline.chat_text(multi, max_new_tokens=4, temperature=1.0, top_p=0.9, seed=3)
    assert sampled == tiny_pipeline.chat_text(multi, max_new_tokens=4, temperature=1.0, top_p=0.9, seed=3)
    with pytest.raises(ValueError, match="empty"):
        list(tiny_pipeline.chat([]))
    with pytest.raises(ValueError, match="role"):
        list(tiny_pipeline.chat([{"role": "robot", "content": "hi"}]))


def test_info_command_counts_the_paper_presets():
    out = subprocess.run([sys.executable, "-m", "hydra_core", "info", "--preset", "paper-1.5b", "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    params = info["parameters"]
    assert params["llm"] == 1_543_714_304  # Qwen2.5-1.5B-Instruct
    assert params["gen_vit"] + params["sem_vit"] == 304_012_288  # InternViT-300M (with its q/k/v biases)
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    memory = info["weight_bytes"]
    assert memory["nf4"] <= 0.40 * memory["bf16"]
    assert memory["fp32"] > memory["bf16"] == memory["fp16"] > memory["int8"] > memory["nf4"]
    from hydra_core.config import paper_7b
    from hydra_core.info import report

    assert report(paper_7b())["parameters"]["llm"] == 7_615_616_512  # Qwen2.5-7B-Instruct


def test_half_precision_files_load_as_float32(tiny_model, text_tokenizer, tmp_path):
    from hydra_core.loading import save_pretrained

    save_pretrained(tiny_model, text_tokenizer, tmp_path / "fp16", dtype=torch.float16)
    loaded = load_pretrained(tmp_path / "fp16").model.state_dict()
    for key, value in tiny_model.state_dict().items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value.half().to(value.dtype))


def test_unreadable_checkpoint_files_are_named(tiny_checkpoint, tmp_path):
    """A pickle saved under the safetensors name, a damaged safetensors file and a broken config.json
    each get a message naming the file and the problem (never unpickled)."""
    def folder(name):
        copy = tmp_path / name
        shutil.copytree(tiny_checkpoint, copy)
        return copy

    disguised = folder("disguised")
    torch.save({"x": torch.zeros(1)}, disguised / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors is a pickle .* safetensors only"):
        load_pretrained(disguised)
    truncated = folder("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_pretrained(truncated)
    bad_json = folder("bad-json")
    (bad_json / "config.json").write_text('{"tokenizer": {')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_pretrained(bad_json)
    not_hydra = folder("not-hydra")
    (not_hydra / "config.json").write_text('{"model_type": "llama", "hidden_size": 4096}')
    with pytest.raises(ValueError, match="config.json does not describe a HYDRA model"):
        load_pretrained(not_hydra)


def test_generation_from_a_noised_image_stays_near_it_at_low_strength(tiny_pipeline):
    """init_latents + strength (img2img): at a low strength the result keeps the start latents (control:
    the same call from pure noise lands far from them); bad combinations are refused with a reason."""
    image = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    start = tiny_pipeline.encode(image)  # [1, N, C]
    near = tiny_pipeline.generate("a red circle", steps=4, guidance=1.0, init_latents=start, strength=0.05).latents
    far = tiny_pipeline.generate("a red circle", steps=4, guidance=1.0).latents
    assert (near - start).norm() < 0.25 * (far - start).norm()
    with pytest.raises(ValueError, match="init_latents"):
        tiny_pipeline.generate("a red circle", steps=2, strength=0.5)
    with pytest.raises(ValueError, match="shape"):
        tiny_pipeline.generate("a red circle", num_images=2, steps=2, init_latents=start, strength=0.5)
    with pytest.raises(ValueError, match="strength"):
        tiny_pipeline.generate("a red circle", steps=2, init_latents=start, strength=0.0)
