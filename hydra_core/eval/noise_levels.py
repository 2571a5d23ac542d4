"""What the generator keeps of a real image at each noise level.

Held-out single-object ShapesWorld scenes are encoded, noised to t = strength and generated back to t = 0
with their own prompt ("a photo of a red circle"), as `HydraPipeline.generate(init_latents=...,
strength=...)` does; the pixel oracle then looks for an object of the asked colour and shape. At strength
1 this is plain generation; as strength falls the result approaches the tokenizer's reconstruction. The
control is the same with another scene's prompt (each image generated back with a mismatched prompt):
what the noised latent alone still carries.

    python -m hydra_core.eval.noise_levels [--checkpoint DIR] [--limit 48] [--strengths 0.1 0.3 0.6 1]

A generator whose colour-and-shape count falls fast as strength grows loses shape while denoising, not
only while following the prompt: it is the denoising at low noise that needs work.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..data import shapesworld as sw
from .suites import eval_rng, mismatched

STRENGTHS = (0.1, 0.3, 0.6, 1.0)


def items(limit: int, seed: int, size: int) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """Held-out single-object scenes (their own evaluation stream) and each one's (colour, shape)."""
    rng = eval_rng(seed, "noise_levels")
    images, wants = [], []
    for _ in range(limit):
        scene = sw.scene_for_prompt(sw.sample_prompt(rng, tag="single_object"), rng)
        images.append(sw.render(scene, size=size))
        wants.append((scene.objects[0].color, scene.objects[0].shape))
    return images, wants


def found(image, colour: str, shape: str) -> tuple[bool, bool]:
    """(an object of this colour, an object of this colour and shape), by the pixel oracle."""
    detections = sw.detect_objects(np.asarray(image))
    return (any(d.color == colour for d in detections),
            any(d.color == colour and d.shape == shape for d in detections))


def noise_levels(pipe, limit: int = 48, seed: int = 0, strengths=STRENGTHS, guidance: float | None = None,
                 steps: int | None = None) -> dict:
    """{"right": {strength: {"colour": share, "colour_shape": share}}, "mismatched": {...}, "reconstruction":
    {...}, "n": limit}: shares of images in which the oracle finds the asked colour (and shape)."""
    images, wants = items(limit, seed, pipe.image_size)
    latents = pipe.encode(images)  # [limit, N, C]
    prompts = [f"a photo of a {colour} {shape}" for colour, shape in wants]
    out: dict = {"n": limit, "strengths": list(strengths)}
    recon = [found(image, *want) for image, want in zip(pipe.decode(latents), wants)]
    out["reconstruction"] = {"colour": float(np.mean([c for c, _ in recon])),
                             "colour_shape": float(np.mean([s for _, s in recon]))}
    for name, texts in (("right", prompts), ("mismatched", mismatched(prompts, 1))):
        rows = {}
        for strength in strengths:
            hits = []
            for i, (text, want) in enumerate(zip(texts, wants)):
                result = pipe.generate(text, num_images=1, seed=seed + i, guidance=guidance, steps=steps,
                                       init_latents=latents[i:i + 1], strength=strength)
                hits.append(found(result.images[0], *want))
            rows[str(strength)] = {"colour": float(np.mean([c for c, _ in hits])),
                                   "colour_shape": float(np.mean([s for _, s in hits]))}
        out[name] = rows
    return out


def format_table(results: dict) -> str:
    lines = ["| strength | colour, right prompt | colour + shape, right prompt | colour + shape, mismatched prompt |",
             "|---:|---:|---:|---:|"]
    recon = results["reconstruction"]
    lines.append(f"| 0 (reconstruction) | {recon['colour']:.2f} | {recon['colour_shape']:.2f} | |")
    for strength in results["strengths"]:
        right, other = results["right"][str(strength)], results["mismatched"][str(strength)]
        lines.append(f"| {strength} | {right['colour']:.2f} | {right['colour_shape']:.2f} | {other['colour_shape']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint folder or Hub id (default: the bundled HYDRA-Tiny)")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="flow steps (default: the model's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from ..pipeline import HydraPipeline

    pipe = HydraPipeline.from_pretrained(args.checkpoint, device=args.device)
    results = noise_levels(pipe, args.limit, args.seed, args.strengths, args.guidance, args.steps)
    results["checkpoint"] = args.checkpoint or "bundled"
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
