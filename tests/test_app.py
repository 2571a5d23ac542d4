"""The app served on 127.0.0.1 with a tiny random-weight HYDRA, called through gradio_client.

Random weights: images are noise and replies are any string, so these tests check the contract
(named endpoints, shapes, per-image seeds, reproducibility, clean errors), not quality. Few steps
everywhere to stay fast on two busy CPU cores.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import app  # noqa: E402  (after the analytics switch)
from studio import chat_tab, common, reconstruct_tab  # noqa: E402

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


def test_generate_reports_the_text_each_image_was_drawn_from(client):
    from hydra_core.prompts import expand_prompt

    _, _, details = generate(client, seed=4, num_images=2)  # the tiny config expands prompts by default
    assert details["generated_from"] == [expand_prompt("a photo of a red circle", s) for s in (4, 5)]
    _, _, details = generate(client, seed=4, num_images=2, expand_prompt=False)
    assert details["generated_from"] == ["a photo of a red circle"] * 2
    _, _, details = generate(client, seed=4, prompt="a red circle at the top left")
    assert details["generated_from"] == ["a red circle at the top left"]  # a place: left as typed


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


def test_chat_streams_the_models_own_reply(client, tiny_pipeline):
    """/chat streams the reply as growing text and ends with exactly the pipeline's reply to the same
    turn (image first, then the text); the image changes what the model is asked."""
    question = "what color is the star?"
    job = client.submit(message=question, image=handle_file(EXAMPLE), max_new_tokens=16, api_name="/chat")
    with_image = job.result()
    updates = list(dict.fromkeys(u for u in job.outputs() if u))  # each distinct text the chat showed
    expected = tiny_pipeline.chat_text([{"role": "user", "content": [{"type": "image", "image": EXAMPLE},
                                                                     {"type": "text", "text": question}]}],
                                       max_new_tokens=16)
    assert expected and with_image == expected
    assert len(updates) >= 2 and all(b.startswith(a) for a, b in zip(updates, updates[1:]))  # it grew
    text_only = client.predict(message="hello", max_new_tokens=4, api_name="/chat")
    assert text_only == tiny_pipeline.chat_text([{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                                                max_new_tokens=4)


def test_noise_probe_and_interpolation(client):
    decoded, pca, info = client.predict(image=handle_file(EXAMPLE), sigma=0.5, decoder_steps=2, seed=0,
                                        api_name="/noise_probe")
    assert Path(decoded).is_file() and Path(pca).is_file() and "σ = 0.50" in info
    strip_gallery, strip = client.predict(image_a=handle_file(EXAMPLE), image_b=handle_file(OTHER_EXAMPLE),
                                          decoder_steps=2, seed=0, api_name="/interpolate")
    assert [item["caption"] for item in strip_gallery] == [f"α = {a:.2f}" for a in reconstruct_tab.INTERPOLATION_ALPHAS]
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
        {"role": "assistant", "content": [{"type": "text", "text": chat_tab.EMPTY_REPLY}]},
        {"role": "user", "content": "and now?"},
    ]
    assert chat_tab.history_to_messages(history) == [
        {"role": "user", "content": [{"type": "image", "image": "/x/a.png"},
                                     {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a star"}]},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
    ]
    assert chat_tab.latest_image(history) == "/x/a.png"
    assert chat_tab.latest_image(history[1:]) is None


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


# ------------------------------------------------------------------ bad input, through the API (issue 9)
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from bad_images import make_corpus

    return {case.name: case for case in make_corpus(tmp_path_factory.mktemp("bad-images"))}


def test_every_corpus_image_gets_an_answer_or_a_named_refusal_on_reconstruct_and_chat(client, corpus):
    """The whole bad-image corpus through /reconstruct and /chat: accepted files give outputs; refused
    ones the pipeline's message (naming the file and the problem, never a server path), never the
    generic "upstream Gradio app has raised an exception"."""
    for case in corpus.values():
        calls = {"/reconstruct": {"image": handle_file(case.path), "decoder_steps": 1, "seed": 0},
                 "/chat": {"message": "what shapes are there?", "image": handle_file(case.path), "max_new_tokens": 2}}
        for api_name, kwargs in calls.items():
            if case.accept:
                result = client.predict(**kwargs, api_name=api_name)
                assert (Path(result[1]).is_file() if api_name == "/reconstruct" else isinstance(result, str)), case.name
                continue
            with pytest.raises(AppError) as refused:
                client.predict(**kwargs, api_name=api_name)
            message = str(refused.value)
            assert re.search(case.refuse, message), (case.name, api_name, message)
            assert "/tmp" not in message and "upstream" not in message, message


def test_uploads_over_the_limit_are_refused_before_decoding(client, served_app, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(common.MAX_UPLOAD_MB * 2**20))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):  # the client checks
        client.predict(image=handle_file(big), decoder_steps=1, seed=0, api_name="/reconstruct")
    with big.open("rb") as file:  # and the server refuses it too
        response = httpx.post(served_app[1] + "gradio_api/upload", files={"files": ("big.png", file, "image/png")})
    assert response.status_code == 413
    from hydra_core.pipeline import MAX_IMAGE_BYTES

    assert common.MAX_UPLOAD_MB * 2**20 == MAX_IMAGE_BYTES


@pytest.mark.parametrize("api_name, overrides, message", [
    ("/generate", {"steps": 500}, "steps must be a whole number from 1 to 100, got 500"),
    ("/generate", {"steps": 0}, "steps must be a whole number from 1 to 100, got 0"),
    ("/generate", {"steps": "nan"}, "steps must be a whole number from 1 to 100, got nan"),
    ("/generate", {"steps": "two"}, "got the text 'two'"),
    ("/generate", {"num_images": 2.5}, "num_images must be a whole number from 1 to 4, got 2.5"),
    ("/generate", {"num_images": None}, "num_images must be a whole number from 1 to 4, got nothing"),
    ("/generate", {"guidance": -1}, "guidance must be a number from 0 to 15, got -1"),
    ("/generate", {"guidance": "inf"}, "guidance must be a number from 0 to 15, got inf"),
    ("/generate", {"decoder_steps": [2]}, "decoder_steps must be a whole number from 1 to 50, got list"),
    ("/generate", {"seed": -5}, "seed must be a whole number from 0 to 2147483643, got -5"),
    ("/generate", {"randomize_seed": "yes"}, "randomize_seed must be true or false"),
    ("/generate", {"expand_prompt": "yes"}, "expand_prompt must be true or false"),
    ("/generate", {"prompt": ""}, "the prompt is empty"),
    ("/generate", {"prompt": " \t\n "}, r"the prompt is empty \(only whitespace\)"),
    ("/generate", {"prompt": "x" * 5000}, "the prompt has 5,000 characters; at most 500 are accepted"),
    ("/generate", {"prompt": "a red\x1bcircle"}, r"control character U\+001B"),
    ("/generate", {"prompt": "<|im_end|> a star"}, "reserved for the model"),
    ("/reconstruct", {"decoder_steps": 51}, "decoder_steps must be a whole number from 1 to 50, got 51"),
    ("/reconstruct", {"seed": 1.5}, "seed must be a whole number"),
    ("/noise_probe", {"sigma": 9}, "sigma must be a number from 0 to 3, got 9"),
    ("/noise_probe", {"sigma": "nan"}, "sigma must be a number from 0 to 3, got nan"),
    ("/interpolate", {"image_b": None}, "Interpolation needs two images"),
    ("/chat", {"max_new_tokens": 0}, "max_new_tokens must be a whole number from 1 to 256, got 0"),
    ("/chat", {"temperature": 5}, "temperature must be a number from 0 to 2, got 5"),
    ("/chat", {"top_p": 0}, "top_p must be a number from 0.05 to 1, got 0"),
    ("/chat", {"message": "x" * 3000}, "the user message has 3,000 characters; at most 2,000"),
    ("/chat", {"message": "hi\x00"}, r"control character U\+0000"),
    ("/chat", {"message": "", "image": None}, "Send a message, an image, or both"),
])
def test_numbers_and_text_out_of_range_get_named_messages(client, api_name, overrides, message):
    image = handle_file(EXAMPLE)
    defaults = {
        "/generate": {"prompt": "a photo of a red circle", "num_images": 1, "seed": 0, "randomize_seed": False, **FAST},
        "/reconstruct": {"image": image, "decoder_steps": 1, "seed": 0},
        "/noise_probe": {"image": image, "sigma": 0.5, "decoder_steps": 1, "seed": 0},
        "/interpolate": {"image_a": image, "image_b": image, "decoder_steps": 1, "seed": 0},
        "/chat": {"message": "hello", "max_new_tokens": 2},
    }[api_name]
    with pytest.raises(AppError, match=message):
        client.predict(**{**defaults, **overrides}, api_name=api_name)


def test_any_unicode_prompt_and_message_work(client):
    gallery, _, details = generate(client, seed=3, prompt="un cercle rouge 🔴 · 赤い円 · دائرة حمراء\u200d")
    assert len(gallery) == 1 and details["prompt"].startswith("un cercle")
    assert isinstance(client.predict(message="héllo 👋", max_new_tokens=2, api_name="/chat"), str)


def test_a_question_about_an_image_without_one_says_so(client):
    reply = client.predict(message="is there a red circle?", max_new_tokens=8, api_name="/chat")
    assert reply == chat_tab.NO_IMAGE_REPLY
    with_image = client.predict(message="is there a red circle?", image=handle_file(EXAMPLE), max_new_tokens=2,
                                api_name="/chat")
    assert with_image != chat_tab.NO_IMAGE_REPLY


# ------------------------------------------------------------------ logs, faults, memory, the queue
def test_a_user_mistake_is_one_log_line_and_a_fault_keeps_its_traceback(client, served_app, caplog, capfd,
                                                                        monkeypatch):
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="hydra_studio"):
        with pytest.raises(AppError, match="prompt is empty"):
            generate(client, seed=1, prompt="")
    records = [r for r in caplog.records if r.name == "hydra_studio"]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert "prompt is empty" in records[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the decoder")

    caplog.clear()
    monkeypatch.setattr(served_app[0].hydra.device, "reconstruct", broken)
    with caplog.at_level(logging.INFO, logger="hydra_studio"):
        with pytest.raises(AppError, match=r"Something went wrong on the server during reconstruct \(RuntimeError\)"):
            client.predict(image=handle_file(EXAMPLE), decoder_steps=1, seed=0, api_name="/reconstruct")
    records = [r for r in caplog.records if r.name == "hydra_studio"]
    assert len(records) == 1 and records[0].exc_info is not None  # the traceback is logged
    assert "a bug in the decoder" in caplog.text


def test_out_of_memory_becomes_a_message_releases_memory_and_the_next_request_works(client, served_app,
                                                                                    monkeypatch):
    handlers = served_app[0].hydra
    real, released = handlers.device.generate_stream, []

    def out_of_memory_once(*args, **kwargs):
        monkeypatch.setattr(handlers.device, "generate_stream", real)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        yield  # a generator, as the real one

    monkeypatch.setattr(handlers.device, "generate_stream", out_of_memory_once)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(True))
    with pytest.raises(AppError, match="The GPU ran out of memory for this request. Its memory was released"):
        generate(client, seed=5)
    assert released == [True]
    gallery, seed, _ = generate(client, seed=5)
    assert len(gallery) == 1 and seed == 5


def test_a_full_queue_answers_busy_and_the_app_keeps_serving(client, served_app, monkeypatch):
    handlers = served_app[0].hydra
    real = handlers.device.reconstruct

    def slow(*args, **kwargs):
        time.sleep(0.25)
        return real(*args, **kwargs)

    monkeypatch.setattr(handlers.device, "reconstruct", slow)
    kwargs = {"image": handle_file(EXAMPLE), "decoder_steps": 1, "seed": 0, "api_name": "/reconstruct"}
    jobs = [client.submit(**kwargs) for _ in range(common.QUEUE_SIZE + 4)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=120)
            outcomes.append("ok")
        except QueueError as error:
            assert "Queue is full" in str(error)
            outcomes.append("busy")
    assert "busy" in outcomes and outcomes.count("ok") >= common.QUEUE_SIZE
    monkeypatch.setattr(handlers.device, "reconstruct", real)
    assert Path(client.predict(**kwargs)[1]).is_file()


def test_identical_outputs_are_not_rewritten_under_a_download(tmp_path):
    """Gradio names output files by their content; rewriting one in place for a second identical request
    cut a concurrent download short. The app's replacement leaves an existing file alone."""
    from gradio import processing_utils

    assert processing_utils.save_pil_to_cache is common._save_pil_to_cache
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    first = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    stamp = os.stat(first).st_mtime_ns
    time.sleep(0.02)
    assert processing_utils.save_pil_to_cache(image, str(tmp_path), format="png") == first
    assert os.stat(first).st_mtime_ns == stamp
    assert pixels(first).tolist() == np.asarray(image).tolist()
    assert not list(tmp_path.rglob("*.partial"))
