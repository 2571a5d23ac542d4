"""Evaluation suites of a HydraPipeline: reconstruction, GenEval-style generation and VQA.

* recon    mean PSNR (inf skipped) and SSIM of reconstructions of held-out ShapesWorld scenes,
           held-out photo crops and, optionally, every image file of a folder.
* geneval  one image per GenEval prompt (drawn round-robin over the six tags, or read from a
           GenEval metadata .jsonl), judged by the pixel-only ShapesWorld oracle; accuracy per tag,
           `overall` = mean over the tags present (as GenEval averages).
           Beside it, the app's self-check (hydra_core.selfcheck: the model answers the questions each
           prompt implies about its own image) scored by how often its verdict equals the oracle's.
* geneval_expanded  the same prompts and seeds, each rewritten first by the pipeline's prompt expansion
           (hydra_core.prompts: the dense caption of a random scene satisfying the prompt), as the app
           generates by default; judged against the prompt as typed.
* vqa      one-word questions about held-out scenes, answered greedily; accuracy per question type
           and over all questions.
* conditioning  the flow loss on held-out (GenEval prompt, scene) pairs with the right prompts, the
           same prompts shuffled and the null prompt, at fixed times and noise: whether generation
           listens to its prompt at all, independent of how good the decoder is.

Every score comes with its input-blind control, so a score equal to its control reads as chance:
recon beside an 8x8 thumbnail enlarged again (bicubic); geneval beside the same images judged
against another prompt's metadata of the same tag ("mismatched") and against its own metadata with
every shape replaced by the next one ("shape_swapped": the images' colours, counts and places stay
right, so a model that draws the right colours as shapeless blobs scores the same here as on its own
prompts); vqa beside the same questions
asked about another scene's image and about a blank image, and beside answering each question type
with its most common answer ("majority").

Result (also the CLI's JSON): {"checkpoint", "seed", "limit", "steps",
  "recon": {"shapesworld" | "photos" | "images": {"psnr", "ssim", "n", "thumbnail_psnr"[, "skipped"]}},
  "geneval": {<tag>: acc for the tags present, "overall", "n", "by_shape": {<shape>: acc of the one-object prompts
              (single_object, colors) asking for it}, "mismatched" | "shape_swapped": {<tag>..., "overall", "by_shape"},
              "self_check": {"agreement_with_oracle", "says_agrees", "majority", "n"}},
  "geneval_samples": [{prompt, tag, correct, reason, mismatched_prompt, mismatched_correct, shape_swapped_correct,
                       self_check, self_check_answers: [[question, expected, answer]]}],
  "geneval_expanded": as "geneval" without "self_check"; "geneval_expanded_samples": as "geneval_samples" with
                       "generated_from" (the expanded prompt) instead of the self-check,
  "vqa": {<qtype>: acc for the types present, "overall", "n",
          "other_image" | "blank_image" | "majority": {<qtype>..., "overall"}},
  "vqa_samples": [{question, answer, qtype, reply, correct, other_reply, blank_reply}],
  "conditioning": {"right", "shuffled", "null", "gap", "times", "n"},
  "seconds": {<suite>: s}}; a suite not run is absent; a mean over nothing is None.

Held-out data is drawn from `np.random.default_rng([seed, EVAL_STREAM, suite])`, a key no training
pool (`default_rng(seed)`) or training step (`default_rng([seed, step])`) uses.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image

from ..data import shapesworld as sw
from ..data.photos import heldout_photo_crops
from ..selfcheck import agreement, ask, normalize_answer, self_check
from .metrics import psnr, ssim

if TYPE_CHECKING:
    from ..pipeline import HydraPipeline

SUITES = ("recon", "geneval", "geneval_expanded", "vqa", "conditioning")
DEFAULT_LIMIT = 60
EVAL_STREAM = 1_000_003  # second entry of every evaluation seed key
_STREAMS = {"recon": 1, "geneval": 2, "vqa": 3, "conditioning": 4, "noise_levels": 5}  # third entry (non-zero: SeedSequence ignores trailing zeros)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
RECON_BATCH = 16
THUMBNAIL = 8  # side of the input-blind reconstruction baseline
CONDITIONING_TIMES = (0.5, 0.7, 0.9)
ONE_OBJECT_TAGS = ("single_object", "colors")  # prompts naming one object: scored by the shape they ask for too


def eval_rng(seed: int, suite: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), EVAL_STREAM, _STREAMS[suite]])


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def accuracy_by(keys: list[str], correct: list[bool], order: Iterable[str] = ()) -> dict[str, float]:
    """Accuracy per key, keys in `order` first, then any others sorted."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for key, ok in zip(keys, correct):
        groups[key].append(bool(ok))
    order = list(order)
    ordered = [k for k in order if k in groups] + sorted(k for k in groups if k not in order)
    return {k: _mean(groups[k]) for k in ordered}


# ---------------------------------------------------------------------- recon
def _image_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--images {directory} is not a folder")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def recon_scores(pipe: "HydraPipeline", images: Iterable, steps: int | None, seed: int) -> dict[str, Any]:
    """Mean PSNR (inf skipped; None if none finite) and SSIM; unreadable files are listed in `skipped`.

    Image i is reconstructed exactly as `pipe.reconstruct(image, steps, seed + i)` (centre-cropped and
    resized to the model's size), but in batches, which is many times faster."""
    from ..pipeline import center_crop_resize, to_pil

    originals, seeds, skipped = [], [], []
    for i, image in enumerate(images):
        try:
            originals.append(center_crop_resize(to_pil(image), pipe.image_size))
            seeds.append(seed + i)
        except ValueError:  # an unreadable or too small image file
            skipped.append(Path(image).name if isinstance(image, (str, Path)) else str(i))
    psnrs, ssims, thumbnails = [], [], []
    for original in originals:
        small = original.resize((THUMBNAIL, THUMBNAIL), Image.BICUBIC).resize(original.size, Image.BICUBIC)
        thumbnails.append(psnr(np.asarray(original), np.asarray(small)))
    for start in range(0, len(originals), RECON_BATCH):
        batch = originals[start:start + RECON_BATCH]
        reconstructions = pipe.decode(pipe.encode(batch), steps=steps, seeds=seeds[start:start + RECON_BATCH])
        for original, reconstruction in zip(batch, reconstructions):
            a, b = np.asarray(original), np.asarray(reconstruction)
            psnrs.append(psnr(a, b))
            ssims.append(ssim(a, b))
    result = {"psnr": _mean(p for p in psnrs if np.isfinite(p)), "ssim": _mean(ssims), "n": len(ssims),
              "thumbnail_psnr": _mean(p for p in thumbnails if np.isfinite(p))}
    if skipped:
        result["skipped"] = skipped
    return result


def heldout_scene(rng: np.random.Generator, size: int) -> tuple[sw.Scene, np.ndarray]:
    scene = sw.sample_scene(rng)
    return scene, sw.render(scene, size=size)


def run_recon(pipe: "HydraPipeline", limit: int, seed: int, steps: int | None = None,
              images_dir: str | Path | None = None) -> dict[str, Any]:
    size, rng = pipe.image_size, eval_rng(seed, "recon")
    sources = {
        "shapesworld": [heldout_scene(rng, size)[1] for _ in range(limit)],
        "photos": list(heldout_photo_crops(limit, size=size, seed=seed)) if limit else [],
    }
    if images_dir is not None:
        sources["images"] = _image_files(images_dir)
    return {name: recon_scores(pipe, images, steps, seed) for name, images in sources.items()}


# ---------------------------------------------------------------------- geneval
def sample_prompts(limit: int, seed: int) -> list[dict[str, Any]]:
    rng = eval_rng(seed, "geneval")
    return [sw.sample_prompt(rng, sw.TAGS[i % len(sw.TAGS)]) for i in range(limit)]


def read_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """GenEval metadata lines ({"tag", "prompt", "include", ...}); blank lines skipped; the first `limit`."""
    metas = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not JSON ({error})") from error
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) or "include" not in meta:
            raise ValueError(f"{path}:{number} needs a string 'prompt' and an 'include' list")
        metas.append({"tag": "custom", **meta})
    return metas if limit is None else metas[:limit]


def mismatched(items: list, group: int) -> list:
    """Each item's partner from another prompt: the one `group` places on (the same tag when the
    prompts run round-robin over `group` tags), or the next one when there are too few."""
    n = len(items)
    shift = group if n > group else 1
    return [items[(i + shift) % n] for i in range(n)] if n > 1 else list(items)


def swap_shapes(meta: dict[str, Any]) -> dict[str, Any]:
    """The prompt metadata with every shape class replaced by the next in sw.SHAPES (a permutation, so
    distinct shapes stay distinct); colours, counts and relations unchanged."""
    def swapped(req: dict[str, Any]) -> dict[str, Any]:
        if req["class"] not in sw.SHAPES:
            return req
        return {**req, "class": sw.SHAPES[(sw.SHAPES.index(req["class"]) + 1) % len(sw.SHAPES)]}
    return {**meta, **{key: [swapped(r) for r in meta[key]] for key in ("include", "exclude") if key in meta}}


def score_geneval(images: Iterable, metas: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Judge images against their prompts with the oracle: (summary, per-prompt samples). The summary's
    "mismatched" block judges the same images against other prompts' metadata: the chance level; its
    "shape_swapped" block against their own metadata with other shapes: the chance level of shape alone."""
    images, samples = list(images), []
    for image, meta, other in zip(images, metas, mismatched(metas, len(sw.TAGS))):
        (correct, reason), (control, _), (shape_control, _) = sw.evaluate_prompts(
            np.asarray(image), [meta, other, swap_shapes(meta)])
        samples.append({"prompt": meta["prompt"], "tag": meta.get("tag", "custom"), "correct": bool(correct),
                        "reason": reason, "mismatched_prompt": other["prompt"], "mismatched_correct": bool(control),
                        "shape_swapped_correct": bool(shape_control)})
    tags = [s["tag"] for s in samples]
    one_object = [i for i, m in enumerate(metas) if m.get("tag") in ONE_OBJECT_TAGS]
    asked = [metas[i]["include"][0]["class"] for i in one_object]

    def scores(key: str) -> dict[str, Any]:
        per_tag = accuracy_by(tags, [s[key] for s in samples], sw.TAGS)
        by_shape = accuracy_by(asked, [samples[i][key] for i in one_object], sw.SHAPES)
        return {**per_tag, "overall": _mean(per_tag.values()), **({"by_shape": by_shape} if by_shape else {})}

    return {**scores("correct"), "n": len(samples),
            **{name: scores(f"{name}_correct") for name in ("mismatched", "shape_swapped")}}, samples


def run_geneval(pipe: "HydraPipeline", limit: int, seed: int, steps: int | None = None,
                prompts_file: str | Path | None = None,
                expand: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """expand=False: every image from its prompt as typed (and the self-check scored); True: from the prompt
    rewritten by the pipeline's prompt expansion, as the app generates by default (samples: "generated_from")."""
    metas = read_prompts(prompts_file, limit) if prompts_file else sample_prompts(limit, seed)
    outputs = [pipe.generate(m["prompt"], num_images=1, steps=steps, decoder_steps=steps, seed=seed + i,
                             expand=expand) for i, m in enumerate(metas)]
    images = [out.images[0] for out in outputs]
    summary, samples = score_geneval(images, metas)
    if expand:
        for sample, out in zip(samples, outputs):
            sample["generated_from"] = out.prompts[0]
    else:
        summary["self_check"] = score_self_check(pipe, images, samples)
    return summary, samples


def score_self_check(pipe: "HydraPipeline", images: list, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The app's self-check (the model answers the questions each prompt implies about its own image)
    against the oracle's verdict on the same image. Adds "self_check" and "self_check_answers" to each
    sample. Control: always giving the oracle's more common verdict ("majority")."""
    verdicts, oracle = [], []
    for image, sample in zip(images, samples):
        answers = self_check(pipe, image, sample["prompt"])
        sample["self_check"] = agreement(answers)
        sample["self_check_answers"] = [[a.question, a.expected, a.answer] for a in answers]
        if sample["self_check"] is not None:
            verdicts.append(sample["self_check"])
            oracle.append(sample["correct"])
    agree = [v == o for v, o in zip(verdicts, oracle)]
    return {"agreement_with_oracle": _mean(agree), "says_agrees": _mean(verdicts),
            "majority": max(_mean(oracle), 1 - _mean(oracle)) if oracle else None, "n": len(agree)}


# ---------------------------------------------------------------------- vqa


def vqa_items(limit: int, seed: int, size: int) -> list[tuple[Image.Image, sw.QA]]:
    """Up to one question per type per fresh scene, interleaved over the types, `limit` in all."""
    rng = eval_rng(seed, "vqa")
    quota = -(-limit // len(sw.QTYPES))
    buckets: dict[str, list] = {q: [] for q in sw.QTYPES}
    for _ in range(20 * quota + 20):  # relation questions need >= 2 objects; others almost always exist
        if min(len(b) for b in buckets.values()) >= quota:
            break
        scene, image = heldout_scene(rng, size)
        by_type: dict[str, list[sw.QA]] = defaultdict(list)
        for qa in sw.qa_pairs(scene, rng):
            by_type[qa.qtype].append(qa)
        for qtype, qas in by_type.items():
            if len(buckets[qtype]) < quota:
                buckets[qtype].append((Image.fromarray(image), qas[int(rng.integers(len(qas)))]))
    items = [b[i] for i in range(quota) for b in buckets.values() if i < len(b)]
    return items[:limit]


def blank_image(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), sw.TINTS["white"])


def _summary(qtypes: list[str], correct: list[bool]) -> dict[str, Any]:
    return {**accuracy_by(qtypes, correct, sw.QTYPES), "overall": _mean(correct)}


def run_vqa(pipe: "HydraPipeline", limit: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy, and the same questions about another scene's image and about a blank image."""
    items = vqa_items(limit, seed, pipe.image_size)
    others = mismatched([image for image, _ in items], len(sw.QTYPES))
    blank = blank_image(pipe.image_size)
    samples = []
    for (image, qa), other in zip(items, others):
        replies = {key: ask(pipe, im, qa.question) for key, im in (("reply", image), ("other_reply", other),
                                                                  ("blank_reply", blank))}
        samples.append({"question": qa.question, "answer": qa.answer, "qtype": qa.qtype, **replies,
                        "correct": normalize_answer(replies["reply"]) == qa.answer})
    qtypes = [s["qtype"] for s in samples]
    majority = {}
    for qtype in set(qtypes):
        answers = [s["answer"] for s in samples if s["qtype"] == qtype]
        majority[qtype] = max(sorted(set(answers)), key=answers.count)
    result = _summary(qtypes, [s["correct"] for s in samples]) | {"n": len(samples)}
    result["other_image"] = _summary(qtypes, [normalize_answer(s["other_reply"]) == s["answer"] for s in samples])
    result["blank_image"] = _summary(qtypes, [normalize_answer(s["blank_reply"]) == s["answer"] for s in samples])
    result["majority"] = _summary(qtypes, [majority[s["qtype"]] == s["answer"] for s in samples])
    return result, samples


# ---------------------------------------------------------------------- conditioning
def conditioning_items(limit: int, seed: int, size: int) -> tuple[list[str], np.ndarray]:
    """Held-out GenEval prompts (round-robin over the tags) and a scene rendered for each: uint8 [n, S, S, 3]."""
    rng = eval_rng(seed, "conditioning")
    metas = [sw.sample_prompt(rng, sw.TAGS[i % len(sw.TAGS)]) for i in range(limit)]
    images = [sw.render(sw.scene_for_prompt(meta, rng), size=size) for meta in metas]
    return [m["prompt"] for m in metas], np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


@torch.no_grad()
def prompt_flow_losses(model, tokenizer, prompts: list[str], latents: torch.Tensor, seed: int = 0,
                       times: Iterable[float] = CONDITIONING_TIMES) -> dict[str, Any]:
    """Flow loss of clean GSB means `latents` [n, N, C] with the right prompts, the prompts shuffled
    (each scene gets another prompt of the same tag) and the null prompt; the same noise and times for
    all three, so only the prompt differs. gap = 1 - right / shuffled (0: the prompt is ignored)."""
    from ..config import NULL_TOKEN
    from ..text import generation_text

    n_tokens = latents.shape[1]
    x0 = model.normalize(latents.to(model.device).float())
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    variants = {"right": prompts, "shuffled": mismatched(prompts, len(sw.TAGS)),
                "null": [NULL_TOKEN] * len(prompts)}
    out: dict[str, Any] = {}
    for name, texts in variants.items():
        enc = tokenizer([generation_text(tokenizer, p, n_tokens) for p in texts], return_tensors="pt",
                        padding=True, add_special_tokens=False).to(model.device)
        losses = [float(model.flow_loss_at(enc.input_ids, enc.attention_mask, x0, eps,
                                           torch.full((len(texts),), t, device=x0.device)))
                  for t in times]
        out[name] = float(np.mean(losses))
    out["gap"] = 1 - out["right"] / out["shuffled"] if out["shuffled"] else None
    return out | {"times": list(times), "n": len(prompts)}


def run_conditioning(pipe: "HydraPipeline", limit: int, seed: int) -> dict[str, Any]:
    prompts, images = conditioning_items(limit, seed, pipe.image_size)
    if not prompts:
        return {"right": None, "shuffled": None, "null": None, "gap": None, "n": 0}
    latents = pipe.encode(list(images))
    return prompt_flow_losses(pipe.model, pipe.tokenizer, prompts, latents, seed)


# ---------------------------------------------------------------------- all
def evaluate(pipe: "HydraPipeline", suites: Iterable[str] = SUITES, limit: int = DEFAULT_LIMIT, seed: int = 0,
             images_dir: str | Path | None = None, prompts_file: str | Path | None = None,
             steps: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the suites; returns the JSON-ready results dict (see the module docstring).

    `steps` sets the sampling steps of every flow (generation and pixel decoder); None = model defaults."""
    suites = list(dict.fromkeys(suites))
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites {unknown}; choose from {SUITES}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    runners = {
        "recon": lambda: run_recon(pipe, limit, seed, steps, images_dir),
        "geneval": lambda: run_geneval(pipe, limit, seed, steps, prompts_file),
        "geneval_expanded": lambda: run_geneval(pipe, limit, seed, steps, prompts_file, expand=True),
        "vqa": lambda: run_vqa(pipe, limit, seed),
        "conditioning": lambda: run_conditioning(pipe, limit, seed),
    }
    results: dict[str, Any] = {"checkpoint": pipe.name, "seed": seed, "limit": limit, "steps": steps}
    seconds = {}
    for suite in suites:
        if log is not None:
            log(f"running {suite} ...")
        start = time.perf_counter()
        out = runners[suite]()
        seconds[suite] = round(time.perf_counter() - start, 3)
        if isinstance(out, tuple):
            results[suite], results[f"{suite}_samples"] = out
        else:
            results[suite] = out
    results["seconds"] = seconds
    return results


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


CONTROLS = {"geneval": ("mismatched", "shape_swapped"), "geneval_expanded": ("mismatched", "shape_swapped"),
            "vqa": ("other_image", "blank_image", "majority")}


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers, each beside its input-blind control(s)."""
    rows = [("suite", "metric", "value", "control", "n")]
    for name, scores in results.get("recon", {}).items():
        rows.append(("recon", f"{name} psnr", _fmt(scores["psnr"]), f"thumbnail {_fmt(scores.get('thumbnail_psnr'))}",
                     str(scores["n"])))
        rows.append(("recon", f"{name} ssim", _fmt(scores["ssim"]), "", ""))
    for suite in ("geneval", "geneval_expanded", "vqa"):
        block = results.get(suite, {})
        for key, value in block.items():
            if key == "n" or isinstance(value, dict):
                continue
            control = " / ".join(f"{c} {_fmt(block[c].get(key))}" for c in CONTROLS[suite] if c in block)
            rows.append((suite, key, _fmt(value), control, str(block["n"]) if key == "overall" else ""))
    check = results.get("geneval", {}).get("self_check")
    if check:
        rows.append(("geneval", "self-check agrees with oracle", _fmt(check["agreement_with_oracle"]),
                     f"majority verdict {_fmt(check['majority'])}", str(check["n"])))
    if "conditioning" in results:
        c = results["conditioning"]
        rows.append(("conditioning", "flow loss, right prompts", _fmt(c["right"]),
                     f"shuffled {_fmt(c['shuffled'])} / null {_fmt(c['null'])}", str(c["n"])))
        rows.append(("conditioning", "gap (1 - right/shuffled)", _fmt(c["gap"]), "0 = prompt ignored", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    seconds = ", ".join(f"{k} {v:.1f}s" for k, v in results.get("seconds", {}).items())
    header = f"checkpoint {results.get('checkpoint')}  seed {results.get('seed')}  limit {results.get('limit')}"
    return "\n".join([header, *lines, f"time: {seconds}"])
