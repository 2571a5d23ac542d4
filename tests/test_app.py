"""The app served on 127.0.0.1 with a tiny random-weight HYDRA, called through gradio_client.

Random weights: images are noise and replies are any string, so these tests check the contract
(named endpoints, shapes, per-image seeds, reproducibility, clean errors), not quality. Few steps
everywhere to stay fast on two busy CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import app  # noqa: E402  (after the analytics switch)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "shapes_2.png"
OTHER_EXAMPLE = ROOT / "assets" / "examples" / "shapes_1.png"
FAST = {"steps": 2, "guidance": 3.0, "decoder_steps": 2}


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app[1], verbose=False)


def generate(client: Client, seed: int, num_images: int = 1, **overrides):
    kwargs = {"prompt": "a photo of a red circle", "num_images": num_images, "seed": seed,
              "randomize_seed": False, **FAST, **overrides}
    return client.predict(**kwargs, api_name="/generate")


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/reconstruct", "/chat", "/noise_probe", "/interpolate"} <= set(endpoints)
    chat_params = [p["parameter_name"] for p in endpoints["/chat"]["parameters"]]
    assert chat_params[:2] == ["message", "image"]


def test_generate_returns_images_and_per_image_seeds(client, tiny_pipeline):
    gallery, seed, details = generate(client, seed=11, num_images=2)
    size = tiny_pipeline.config.tokenizer.image_size
    assert seed == 11 and details["seeds"] == [11, 12]
    assert [item["caption"] for item in gallery] == ["seed 11", "seed 12"]
    for item in gallery:
        assert Path(item["image"]).is_file()
        assert pixels(item["image"]).shape == (size, size, 3)


def test_same_seed_gives_the_same_image(client):
    first, _, _ = generate(client, seed=7)
    second, _, _ = generate(client, seed=7)
    np.testing.assert_array_equal(pixels(first[0]["image"]), pixels(second[0]["image"]))


def test_randomized_seed_is_reported(client):
    _, seed, details = generate(client, seed=0, randomize_seed=True)
    assert details["seeds"] == [seed]


def test_reconstruct_returns_images_and_metrics(client, tiny_pipeline):
    original, reconstruction, error, psnr, ssim = client.predict(
        image=handle_file(EXAMPLE), decoder_steps=2, seed=0, api_name="/reconstruct")
    size = tiny_pipeline.config.tokenizer.image_size
    assert pixels(original).shape == pixels(reconstruction).shape == (size, size, 3)
    assert pixels(error).ndim == 3
    assert np.isfinite(psnr) and -1.0 <= ssim <= 1.0


def test_chat_returns_text(client):
    with_image = client.predict(message="what color is the star?", image=handle_file(EXAMPLE), max_new_tokens=8,
                                api_name="/chat")
    text_only = client.predict(message="hello", max_new_tokens=4, api_name="/chat")
    assert isinstance(with_image, str) and isinstance(text_only, str)


def test_noise_probe_and_interpolation(client):
    decoded, pca, info = client.predict(image=handle_file(EXAMPLE), sigma=0.5, decoder_steps=2, seed=0,
                                        api_name="/noise_probe")
    assert Path(decoded).is_file() and Path(pca).is_file() and "σ = 0.50" in info
    strip_gallery, strip = client.predict(image_a=handle_file(EXAMPLE), image_b=handle_file(OTHER_EXAMPLE),
                                          decoder_steps=2, seed=0, api_name="/interpolate")
    assert [item["caption"] for item in strip_gallery] == [f"α = {a:.2f}" for a in app.INTERPOLATION_ALPHAS]
    assert Path(strip).is_file()


def test_bad_input_is_a_clean_error_and_the_app_keeps_serving(client):
    with pytest.raises(AppError, match="prompt is empty"):
        generate(client, seed=1, prompt="   ")
    with pytest.raises(AppError, match="message"):
        client.predict(message="", api_name="/chat")
    gallery, _, _ = generate(client, seed=1)
    assert len(gallery) == 1


# ------------------------------------------------------------------ UI glue, no server
def test_history_to_messages_keeps_text_and_images():
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": "/x/a.png", "mime_type": "image/png"}},
                                     {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a star"}]},
        {"role": "assistant", "content": [{"type": "text", "text": app.EMPTY_REPLY}]},
        {"role": "user", "content": "and now?"},
    ]
    assert app.history_to_messages(history) == [
        {"role": "user", "content": [{"type": "image", "image": "/x/a.png"},
                                     {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a star"}]},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
    ]
    assert app.latest_image(history) == "/x/a.png"
    assert app.latest_image(history[1:]) is None


def test_flags_read_environment_variables(monkeypatch):
    monkeypatch.setenv("HYDRA_CHECKPOINT", "some/checkpoint")
    monkeypatch.setenv("HYDRA_PRECISION", "bf16")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("HYDRA_PORT", "7999")
    args = app.parse_args([])
    assert (args.checkpoint, args.device, args.precision, args.host, args.port, args.share) == (
        "some/checkpoint", "auto", "bf16", "0.0.0.0", 7999, False)
    assert app.parse_args(["--device", "cpu", "--share"]).device == "cpu"


def test_import_loads_no_model():
    code = "import sys, app; print(sorted(m for m in ('hydra_core.pipeline', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}, check=True)
    assert out.stdout.strip() == "[]"
