"""The evaluation suites and their command line, on the random-weight tiny pipeline (few steps, small limits)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hydra_core.data import shapesworld as sw
from hydra_core.eval import evaluate, format_table, score_geneval
from hydra_core.eval.suites import ONE_OBJECT_TAGS, accuracy_by, normalize_answer, read_prompts, swap_shapes, vqa_items
from hydra_core.prompts import expand_prompt

REPO = Path(__file__).resolve().parent.parent
CUSTOM_PROMPTS = [
    {"tag": "colors", "prompt": "a photo of a red circle",
     "include": [{"class": "circle", "count": 1, "color": "red"}]},
    {"tag": "counting", "prompt": "a photo of three stars", "include": [{"class": "star", "count": 3}],
     "exclude": [{"class": "star", "count": 4}]},
]


# One intra-op thread: these models are tiny, and on a shared CPU two threads wait on each other
# at every op (a generation step took ~35x longer with two threads next to a training job).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_accuracies(block: dict, keys: tuple[str, ...], n: int) -> None:
    assert block["n"] == n
    for key in (*keys, "overall"):
        assert 0.0 <= block[key] <= 1.0, (key, block[key])


def _check_recon(block: dict, n: int) -> None:
    assert block["n"] == n
    assert block["psnr"] is None or (math.isfinite(block["psnr"]) and block["psnr"] > 0)
    assert -1.0 <= block["ssim"] <= 1.0


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in CUSTOM_PROMPTS) + "\n\n")
    return path


def test_evaluate_all_suites(tiny_pipeline):
    results = evaluate(tiny_pipeline, limit=6, seed=1, steps=2)
    assert results["seed"] == 1 and results["limit"] == 6
    for source in ("shapesworld", "photos"):
        _check_recon(results["recon"][source], 6)
    assert "images" not in results["recon"]
    _check_accuracies(results["geneval"], sw.TAGS, 6)  # round-robin: one prompt per tag
    assert results["geneval"]["overall"] == pytest.approx(np.mean([results["geneval"][t] for t in sw.TAGS]))
    assert len(results["geneval_samples"]) == 6
    _check_accuracies(results["vqa"], sw.QTYPES, 6)
    assert [s["qtype"] for s in results["vqa_samples"]] == [*sw.QTYPES, "count"]
    assert set(results["seconds"]) == {"recon", "geneval", "geneval_expanded", "vqa", "conditioning"}
    # The same prompts and seeds, each generated from its expansion and judged against the prompt as typed.
    _check_accuracies(results["geneval_expanded"], sw.TAGS, 6)
    expanded = results["geneval_expanded_samples"]
    assert [s["prompt"] for s in expanded] == [s["prompt"] for s in results["geneval_samples"]]
    assert all(s["generated_from"] == expand_prompt(s["prompt"], 1 + i) for i, s in enumerate(expanded))
    assert "self_check" not in results["geneval_expanded"] and "self_check" in results["geneval"]
    # Every score carries its input-blind control.
    for source in ("shapesworld", "photos"):
        assert results["recon"][source]["thumbnail_psnr"] > 10
    for control in ("mismatched", "shape_swapped"):
        _check_accuracies(results["geneval"][control] | {"n": 6}, sw.TAGS, 6)
    for control in ("other_image", "blank_image", "majority"):
        _check_accuracies(results["vqa"][control] | {"n": 6}, sw.QTYPES, 6)
    assert {"reply", "other_reply", "blank_reply"} <= set(results["vqa_samples"][0])
    conditioning = results["conditioning"]
    assert conditioning["n"] == 6 and all(conditioning[k] > 0 for k in ("right", "shuffled", "null"))
    json.dumps(results, allow_nan=False)
    table = format_table(results)
    assert "shapesworld psnr" in table and "overall" in table


def test_prompts_file_and_images_folder(tiny_pipeline, prompts_file, tmp_path):
    results = evaluate(tiny_pipeline, suites=("geneval",), limit=5, steps=2, prompts_file=prompts_file)
    assert set(results) >= {"geneval", "geneval_samples"} and "recon" not in results and "vqa" not in results
    assert results["geneval"]["n"] == 2
    assert [k for k in results["geneval"] if k not in ("overall", "n", "mismatched", "shape_swapped", "self_check", "by_shape")] == ["counting", "colors"]
    assert results["geneval_samples"][0]["mismatched_prompt"] == CUSTOM_PROMPTS[1]["prompt"]  # two prompts: each judged by the other
    assert [s["prompt"] for s in results["geneval_samples"]] == [m["prompt"] for m in CUSTOM_PROMPTS]

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 30)), ("b.PNG", (64, 64))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    results = evaluate(tiny_pipeline, suites=("recon",), limit=1, steps=2, images_dir=folder)
    _check_recon(results["recon"]["images"], 2)
    _check_recon(results["recon"]["shapesworld"], 1)


def test_cli_writes_json_and_table(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "hydra_core.eval", "--checkpoint", str(tiny_checkpoint), "--suite", "all",
           "--limit", "3", "--steps", "2", "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["checkpoint"] == str(tiny_checkpoint) and results["limit"] == 3 and results["seed"] == 0
    _check_recon(results["recon"]["shapesworld"], 3)
    _check_recon(results["recon"]["photos"], 3)
    _check_accuracies(results["geneval"], sw.TAGS[:3], 3)
    _check_accuracies(results["vqa"], sw.QTYPES[:3], 3)
    assert "geneval" in proc.stdout and "vqa" in proc.stdout and "shapesworld psnr" in proc.stdout


def test_cli_rejects_bad_arguments(tmp_path):
    cmd = [sys.executable, "-m", "hydra_core.eval", "--suite", "nope", "--json", str(tmp_path / "x.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=ONE_THREAD_ENV)
    assert proc.returncode == 2 and "--suite" in proc.stderr


def test_geneval_scorer_is_not_trivial():
    rng = np.random.default_rng(123)
    metas = [sw.sample_prompt(rng, tag) for tag in sw.TAGS for _ in range(5)]
    truth = [sw.render(sw.scene_for_prompt(m, rng)) for m in metas]
    summary, samples = score_geneval(truth, metas)
    assert summary["n"] == 30 and summary["overall"] >= 0.95, [s for s in samples if not s["correct"]]
    assert set(summary["by_shape"]) == set(sw.SHAPES) and min(summary["by_shape"].values()) >= 0.95, summary
    # The control judges each image against another prompt of its tag: perfect images score far less.
    assert summary["mismatched"]["overall"] <= summary["overall"] - 0.5, summary["mismatched"]
    assert summary["shape_swapped"]["overall"] <= summary["overall"] - 0.5, summary["shape_swapped"]
    # Right colours, counts and places but other shapes: the prompts fail, the shape-swapped control passes.
    wrong_shapes = [sw.render(sw.scene_for_prompt(swap_shapes(m), rng)) for m in metas]
    summary = score_geneval(wrong_shapes, metas)[0]
    assert summary["overall"] <= 0.1 and summary["shape_swapped"]["overall"] >= 0.95, summary
    assert max(summary["by_shape"].values()) <= 0.1, summary["by_shape"]
    # A generator that draws every object as a square of the right colour: the colour score looks fair,
    # the breakdown by asked shape shows where it comes from.
    one_object = [m for m in metas if m["tag"] in ONE_OBJECT_TAGS] * 4
    squares = [sw.render(sw.scene_for_prompt({**m, "include": [{**m["include"][0], "class": "square"}]}, rng))
               for m in one_object]
    summary = score_geneval(squares, one_object)[0]
    asked = {m["include"][0]["class"] for m in one_object}
    assert summary["by_shape"] == {s: float(s == "square") for s in sw.SHAPES if s in asked}, summary["by_shape"]
    blank = [np.full((64, 64, 3), 255, np.uint8)] * len(metas)
    assert score_geneval(blank, metas)[0]["overall"] <= 0.05


def test_helpers(prompts_file, tmp_path):
    assert accuracy_by(["b", "a", "b", "z"], [True, False, False, True], order=("a", "b")) == \
        {"a": 0.0, "b": 0.5, "z": 1.0}
    assert [normalize_answer(r) for r in ("  Yes.", "TWO objects", "3", "", "red!")] == \
        ["yes", "two", "three", "", "red"]
    reasoned = "red circle at the top, blue star at the bottom, so no"
    assert [normalize_answer(r) for r in (reasoned, reasoned.split(", so")[0])] == ["no", "red"]
    assert [m["tag"] for m in read_prompts(prompts_file, limit=1)] == ["colors"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="include"):
        read_prompts(bad)
    items = vqa_items(11, seed=0, size=64)
    counts = {q: sum(qa.qtype == q for _, qa in items) for q in sw.QTYPES}
    assert len(items) == 11 and max(counts.values()) - min(counts.values()) <= 1


def test_about_model_shows_each_score_beside_its_control(tiny_pipeline, tmp_path):
    from hydra_core.eval.report import about_model

    assert "no `eval.json`" in about_model(tmp_path)
    results = evaluate(tiny_pipeline, limit=6, seed=1, steps=2)
    (tmp_path / "eval.json").write_text(json.dumps(results))
    text = about_model(tmp_path)
    shapes_row = next(line for line in text.splitlines() if line.startswith("| recon PSNR, held-out ShapesWorld"))
    assert f"thumbnail {results['recon']['shapesworld']['thumbnail_psnr']:.3f}" in shapes_row
    overall_row = next(line for line in text.splitlines() if line.startswith("| GenEval overall"))
    assert f"mismatched prompt {results['geneval']['mismatched']['overall']:.3f}" in overall_row
    assert f"other shapes {results['geneval']['shape_swapped']['overall']:.3f}" in overall_row
    for shape, score in results["geneval"]["by_shape"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| GenEval one-object prompts asking for a {shape} "))
        assert f"| {score:.3f} |" in row and "other shapes" in row
    assert "blank" in next(line for line in text.splitlines() if line.startswith("| VQA overall"))
    assert "shuffled prompts" in text
    expanded_row = next(line for line in text.splitlines()
                        if line.startswith("| GenEval overall, prompt expanded (the app's default)"))
    assert f"| {results['geneval_expanded']['overall']:.3f} |" in expanded_row
    assert f"mismatched prompt {results['geneval_expanded']['mismatched']['overall']:.3f}" in expanded_row


def test_targets_count_each_vqa_question_type_and_the_margin_over_its_control():
    """The issue's targets: VQA overall >= 0.90 and each question type >= 0.80, each at least 0.40 above its
    blank-image control; GenEval overall >= 0.80 with the mismatched-prompt control at least 0.50 lower. A
    model that meets the overall VQA target while answering one type at chance, or whose score its control
    nearly matches, has not met them, and the table and the list of missed targets say so."""
    from hydra_core.eval.report import evaluation_table, missed_targets

    blank = {"count": 0.3, "color": 0.2, "shape": 0.2, "exist": 0.5, "relation": 0.6, "overall": 0.4}
    results = {"vqa": {"count": 1.0, "color": 1.0, "shape": 1.0, "exist": 0.85, "relation": 0.6, "overall": 0.92,
                       "blank_image": blank},
               "geneval": {"overall": 0.85, "single_object": 0.96, "colors": 0.95, "mismatched": {"overall": 0.40}}}
    rows = {line.split(" | ")[0].strip("| "): line for line in evaluation_table(results).splitlines()}
    for q in ("count", "color", "shape", "exist", "relation"):
        assert rows[f"VQA {q}"].endswith("| ≥ 0.8, 0.40 above blank |"), rows[f"VQA {q}"]
    assert rows["VQA overall"].endswith("| ≥ 0.9, 0.40 above blank |")
    assert rows["GenEval overall"].endswith("| ≥ 0.8, 0.50 above mismatched prompt |")
    missed = {path for path, _ in missed_targets(results)}
    # relation is below 0.80; existence clears 0.80 but only 0.35 above blank; GenEval overall clears 0.80 but
    # only 0.45 above its mismatched control. Count, colour, shape, overall VQA and the two GenEval rows are met.
    assert {("vqa", "relation"), ("vqa", "exist"), ("geneval", "overall")} <= missed
    assert not missed & {("vqa", "count"), ("vqa", "color"), ("vqa", "shape"), ("vqa", "overall"),
                         ("geneval", "single_object"), ("geneval", "colors")}
    results["geneval"]["mismatched"]["overall"] = 0.30
    assert ("geneval", "overall") not in {path for path, _ in missed_targets(results)}
    del results["geneval"]["mismatched"]  # unmeasured control: the margin is not shown, so the target is not met
    assert ("geneval", "overall") in {path for path, _ in missed_targets(results)}
