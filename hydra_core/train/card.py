"""The model card (README.md) of a built checkpoint: what it is, how it was trained, what it scores."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import HydraConfig
from ..eval.report import evaluation_table, fmt, get, missed_targets
from ..info import report
from .stages import STAGES

STAGE_ORDER = ("teacher", "text", "tok1", "tok2", "umm1", "umm2", "umm3")


def read_stage_logs(work: Path, trained: tuple[str, ...]) -> dict[str, dict]:
    """Per stage of `trained` that has a log under `work`: steps, minutes, final losses and last held-out
    measures (robust to resumed runs: a record repeated after a resume is counted once). A work folder
    shared by side-by-side runs holds other stages' logs too, so a run names the stages it trained."""
    stages = {}
    for stage in (s for s in STAGE_ORDER if s in trained):
        log = work / stage / "log.jsonl"
        if not (log.is_file() and log.read_text().strip()):
            continue
        records = {r["step"]: r for r in map(json.loads, log.read_text().strip().splitlines())}
        steps = sorted(records)
        seconds = sum(records[s]["sec_per_step"] * (s - p) for p, s in zip([0] + steps[:-1], steps))
        measured = [records[s] for s in steps if any(_is_monitor(k) for k in records[s])]
        stages[stage] = {
            "steps": steps[-1], "minutes": round(seconds / 60, 2),
            "final": {k: v for k, v in records[steps[-1]].items() if k not in ("sec_per_step", "step")
                      and not _is_monitor(k)},
            "heldout": {k: v for k, v in measured[-1].items() if _is_monitor(k)} if measured else {}}
    return stages


def model_card(config: HydraConfig, results: dict, segments: list[dict]) -> str:
    """segments: the training runs behind the weights, oldest first (see build.Builder.segment)."""
    info = report(config)
    total_minutes = sum(st.get("minutes", 0) for seg in segments for st in seg["stages"].values())
    lines = [
        "---",
        "library_name: hydra-studio",
        "pipeline_tag: any-to-any",
        "tags: [hydra, unified-multimodal, flow-matching, tokenizer, shapesworld]",
        "---",
        "",
        "# HYDRA-Tiny",
        "",
        "A small HYDRA (arXiv 2603.15228) trained from scratch by HYDRA Studio on **ShapesWorld**, a procedural world",
        "of coloured shapes, plus crops of photographs bundled with scikit-image. It is the app's embedded default:",
        "it reconstructs 64×64 images, generates ShapesWorld scenes from text and answers one-word questions about",
        "them, on a laptop CPU. It knows nothing outside that world.",
        "",
        "## Architecture",
        "",
        f"HYDRA-TOK: {config.tokenizer.num_hidden_layers}-block InternVL-style ViT (width {config.tokenizer.hidden_size}, "
        f"patch {config.tokenizer.patch_size}) split {config.tokenizer.gen_layers}+"
        f"{config.tokenizer.num_hidden_layers - config.tokenizer.gen_layers}, GSB with C = "
        f"{config.tokenizer.latent_channels} channels on {config.tokenizer.num_tokens} tokens, a pixel flow decoder "
        f"({config.tokenizer.decoder_layers} DiT blocks, {config.tokenizer.decoder_steps} Euler steps). LLM: Qwen2 "
        f"({config.llm['num_hidden_layers']} layers, width {config.llm['hidden_size']}, vocabulary "
        f"{config.llm['vocab_size']} byte-level BPE)"
        + (", learned 2D position embeddings added to the image tokens' LLM inputs" if config.image_position_embedding
           else "")
        + f". Flow head: {config.flow_head_layers} AdaLN-Zero blocks. Default sampling: {config.default_steps} flow "
        f"steps at guidance {config.default_guidance:g}.",
        "",
        "| part | parameters |", "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in info["parameters"].items()],
        "",
        "## Evaluation",
        "",
        f"Measured with `python -m hydra_core.eval --suite all --limit {results.get('limit')} --seed {results.get('seed')}`"
        " on held-out data drawn with a seed no training batch uses. GenEval-style scores come from a pixel-only",
        "oracle (colour segmentation and a shape classifier) that agrees with the ground truth on 100% of rendered",
        "test scenes. Every score stands beside its input-blind control: a score equal to its control is chance.",
        "",
        evaluation_table(results),
    ]
    lines += ["", f"Samples: {get(results, ('geneval', 'n'))} prompts, {get(results, ('vqa', 'n'))} questions, "
                  f"{get(results, ('recon', 'shapesworld', 'n'))} scenes and {get(results, ('recon', 'photos', 'n'))} "
                  f"photo crops, {get(results, ('conditioning', 'n'))} prompt–scene pairs for the flow losses.", ""]
    first = segments[0]
    lines += [
        "## Training",
        "",
        "One command rebuilds the first segment from nothing (resumable; each stage is skipped once done):",
        "",
        f"```bash\n{first['command']}\n```",
        "",
        f"Training time: {total_minutes:.0f} minutes in all, over {len(segments)} segment(s) (from the stage logs,",
        "without the held-out measurements; the cores were shared with other work, so an idle machine is faster).",
    ]
    for number, segment in enumerate(segments, 1):
        lines += _segment_lines(number, segment)
    lines += [
        "",
        "## Data",
        "",
        "- ShapesWorld (`hydra_core/data/shapesworld.py`): 64×64 scenes with 1–4 objects from 4 shapes × 6 colours ×",
        "  2 sizes on plain, grainy or striped light backgrounds; captions, dense captions (every object's size,",
        "  colour, shape and place on a 3×3 grid, and the background), one-word QA (count, colour, shape,",
        "  existence, relations) and GenEval-format prompts of the six GenEval tags.",
        "- Photos: random crops of the sample images bundled in scikit-image (see each loader's docstring for its",
        "  licence); astronaut, coffee, camera and gravel are held out for evaluation.",
        "",
        "## Limits",
        "",
        "- Only ShapesWorld's vocabulary: shapes circle/square/triangle/star, six colours, counts up to four,",
        "  left/right/above/below. Other prompts give ShapesWorld-like images; other questions get ShapesWorld answers.",
        f"- 64×64 pixels, {total_minutes:.0f} minutes of CPU training: the scores above are what this budget reached,",
        "  not what the architecture can do.",
    ]
    missed = missed_targets(results)
    if missed:
        lines += ["", "## Targets not reached", ""]
        lines += [f"- {'/'.join(path)}: {fmt(get(results, path))}"
                  + (f" ({target.control_name} {fmt(get(results, target.control))})" if target.control else "")
                  + f" (target {target})" for path, target in missed]
        lines += ["", f"Budget behind these numbers: {_samples_seen(segments)}."]
    return "\n".join(lines) + "\n"


def _segment_lines(number: int, segment: dict) -> list[str]:
    from .build import STEPS

    descriptions = {"teacher": "semantic teacher ViT on ShapesWorld attributes (per-token shape+colour, count)"}
    descriptions |= {k: v.description for k, v in STAGES.items()}
    origin = f"continues `{segment['init_from']}`" if segment.get("init_from") else "from nothing"
    minutes = sum(st.get("minutes", 0) for st in segment["stages"].values())
    lines = ["", f"### Segment {number} ({segment.get('date', 'date unrecorded')}, {origin}, {minutes:.0f} minutes)", ""]
    if number > 1 or segment.get("init_from"):
        lines += [f"```bash\n{segment['command']}\n```", ""]
    if segment.get("machine"):
        batch = segment.get("batch")
        lines += [f"Machine: {segment['machine']}." + (f" Batch sizes: {batch}." if batch else ""), ""]
    lines += ["| stage | what trains | steps | minutes | final losses | held-out, last measured |",
              "|---|---|---:|---:|---|---|"]
    for stage, record in segment["stages"].items():
        losses = ", ".join(f"{k} {v:.3g}" for k, v in record["final"].items())
        held = ", ".join(f"{k} {v:.3g}" for k, v in record["heldout"].items())
        lines.append(f"| {stage} | {descriptions[stage]} | {record.get('steps', STEPS[stage])} | "
                     f"{record.get('minutes', 0):.1f} | {losses} | {held} |")
    for key in ("notes", "ablations"):
        if segment.get(key):
            lines += ["", segment[key]]
    return lines


def _is_monitor(key: str) -> bool:
    return key.startswith(("heldout_", "psnr", "sem_", "teacher_"))


def _samples_seen(segments: list[dict]) -> str:
    from .build import DEFAULT_BATCH

    def samples(names, kind):
        return sum(seg["stages"].get(s, {}).get("steps", 0) * seg.get("batch", DEFAULT_BATCH)[kind]
                   for seg in segments for s in names)

    batches = sorted({(seg.get("batch", DEFAULT_BATCH)["tok"], seg.get("batch", DEFAULT_BATCH)["umm"])
                      for seg in segments})
    return (f"{samples(('tok1', 'tok2'), 'tok'):,} tokenizer images and "
            f"{samples(('umm1', 'umm2', 'umm3'), 'umm'):,} unified samples (batch tokenizer / unified: "
            + ", ".join(f"{t} / {u}" for t, u in batches) + ")")


def write_model_card(out: Path, config: HydraConfig, results: dict, segments: list[dict]) -> Path:
    (out / "eval.json").write_text(json.dumps(results, indent=2, allow_nan=False))
    path = out / "README.md"
    path.write_text(model_card(config, results, segments))
    return path
