"""The studio's own features, through the served app: live previews while generating, Stop, the
self-check (the model reads its images back), per-visitor status, and the app as an MCP tool."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import httpx
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402

from hydra_core.data import shapesworld as sw  # noqa: E402
from hydra_core.selfcheck import Answer, agreement, prompt_checks  # noqa: E402


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app[1], verbose=False)


def generate_job(client, **kwargs):
    args = {"prompt": "a photo of a red circle", "num_images": 2, "steps": 10, "guidance": 2.0, "seed": 5,
            "randomize_seed": False, "decoder_steps": 1} | kwargs
    return client.submit(**args, api_name="/generate")


def test_generate_streams_previews_of_the_clean_estimate_before_the_final_images(client):
    job = generate_job(client)
    outputs = list(job)  # every streamed update, then the final one
    final = job.result()
    captions = [[item["caption"] for item in update[0]] for update in outputs]
    previews = [c for c in captions if all("preview at step" in text for text in c)]
    assert len(previews) >= 2, captions  # LIVE_PREVIEWS along a 10-step flow
    assert [item["caption"] for item in final[0]] == ["seed 5", "seed 6"]
    steps = [int(c[0].split("step ")[1].split("/")[0]) for c in previews]
    assert steps == sorted(steps) and steps[-1] < 10, steps
    first_preview = np.asarray(Image.open(outputs[0][0][0]["image"]))
    final_image = np.asarray(Image.open(final[0][0]["image"]))
    assert first_preview.shape == final_image.shape and not np.array_equal(first_preview, final_image)


def test_closing_the_stream_stops_the_flow_early(tiny_pipeline, monkeypatch):
    from studio.device import GENERATION_THREAD, device_functions

    calls = []
    velocity = tiny_pipeline.model.image_velocity

    def counted(*args, **kwargs):
        calls.append(time.perf_counter())
        return velocity(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline.model, "image_velocity", counted)
    stream = device_functions(tiny_pipeline).generate_stream("a photo of a red circle", 1, 60, 1.0, 0, 1, 30)
    kind, step, total, _ = next(stream)  # the first preview (every 60 // 31 = 1 step)
    assert (kind, total) == ("preview", 60)
    stream.close()  # what Gradio does on Stop
    deadline = time.time() + 10
    while any(t.name == GENERATION_THREAD for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(t.name == GENERATION_THREAD for t in threading.enumerate()), "the generation did not end"
    assert len(calls) < 60, f"{len(calls)} of 60 flow steps ran after Stop"


def test_prompt_checks_ask_what_the_prompt_fixes():
    def asked(prompt):
        return {(c.question, c.expected) for c in prompt_checks(prompt)}

    assert asked("a photo of a red circle") == {("how many circles are there?", "one"),
                                                ("is there a red circle?", "yes"),
                                                ("what color is the circle?", "red")}
    assert asked("a photo of three stars") == {("how many stars are there?", "three")}
    assert ("is the red circle left of the blue star?", "yes") in asked("a red circle left of a blue star")
    # Two mentions of one shape: neither count nor "the circle" is determined by either alone.
    assert asked("a red circle and a blue circle") == {("is there a red circle?", "yes"),
                                                       ("is there a blue circle?", "yes")}
    assert asked("a cat on a sofa") == set()
    assert agreement([]) is None
    assert agreement([Answer("q", "red", "red"), Answer("q", "one", "two")]) is False


def test_self_check_endpoint_asks_the_model_each_implied_question(client, tiny_pipeline, tmp_path):
    scene = sw.scene_for_prompt({"tag": "colors", "prompt": "a photo of a red circle",
                                 "include": [{"class": "circle", "count": 1, "color": "red"}]},
                                np.random.default_rng(0))
    path = tmp_path / "scene.png"
    Image.fromarray(sw.render(scene)).save(path)
    result = client.predict(handle_file(str(path)), "a photo of a red circle", api_name="/self_check")
    implied = [(c.question, c.expected) for c in prompt_checks("a photo of a red circle")]
    assert [(q["question"], q["prompt_implies"]) for q in result["questions"]] == implied
    from hydra_core.selfcheck import ask, normalize_answer

    # The answers are the model's own (the random tiny model answers something; the same as asking it here).
    for q in result["questions"]:
        assert q["model_answer"] == normalize_answer(ask(tiny_pipeline, Image.open(path), q["question"]))
        assert q["agrees"] == (q["model_answer"] == q["prompt_implies"])
    assert result["agrees"] == all(q["agrees"] for q in result["questions"])
    nothing = client.predict(handle_file(str(path)), "a cat on a sofa", api_name="/self_check")
    assert nothing == {"agrees": None, "questions": []}


def test_each_visitor_sees_only_their_own_last_request(served_app):
    studio = served_app[0].hydra
    alice, bob = SimpleNamespace(session_hash="alice"), SimpleNamespace(session_hash="bob")
    studio.record(alice, "generate", 1.25)
    assert "generate took 1.25 s" in studio.status(alice)
    assert "generate took" not in studio.status(bob) and "none yet" in studio.status(bob)


def test_mcp_server_lists_the_public_endpoints_as_described_tools(tiny_pipeline):
    import app

    demo, url = app.serve_locally(tiny_pipeline, mcp_server=True)
    try:
        schema = httpx.get(f"{url}gradio_api/mcp/schema", timeout=30).json()
    finally:
        demo.close()
    tools = {tool["name"]: tool for tool in schema}
    for name in ("generate", "self_check", "reconstruct", "chat"):
        matches = [t for n, t in tools.items() if n.endswith(name)]
        assert matches, sorted(tools)
        assert len(matches[0]["description"]) > 40, matches[0]
    generate = next(t for n, t in tools.items() if n.endswith("generate"))
    properties = generate["inputSchema"]["properties"]
    assert {"prompt", "num_images", "seed"} <= set(properties)
    assert "1-4" in properties["num_images"].get("description", ""), properties["num_images"]
    assert not any(n.endswith(("show_generated", "self_check_batch", "add_user_message")) for n in tools)


def test_self_check_suite_scores_agreement_with_the_oracle(tiny_pipeline):
    from hydra_core.eval.suites import run_geneval

    summary, samples = run_geneval(tiny_pipeline, limit=6, seed=0, steps=2)
    check = summary["self_check"]
    asked = [s for s in samples if s["self_check"] is not None]
    assert check["n"] == len(asked) > 0
    assert check["agreement_with_oracle"] == pytest.approx(
        np.mean([s["self_check"] == s["correct"] for s in asked]))
    assert all(len(s["self_check_answers"]) == len(prompt_checks(s["prompt"])) for s in samples)
