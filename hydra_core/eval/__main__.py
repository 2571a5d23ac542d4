"""Command line: python -m hydra_core.eval --checkpoint DIR --suite recon|geneval|vqa|all --json OUT."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .suites import DEFAULT_LIMIT, SUITES, evaluate, format_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hydra_core.eval", description=__doc__)
    parser.add_argument("--checkpoint", help="checkpoint folder or Hub id (default: the bundled HYDRA-Tiny)")
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("--images", type=Path, help="also reconstruct every image file in this folder")
    parser.add_argument("--prompts", type=Path, help="GenEval metadata .jsonl to use instead of sampled prompts")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help="items per source (recon: scenes and photo crops each; geneval prompts; vqa questions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="flow steps for generation and the pixel decoder (default: model's)")
    parser.add_argument("--device", help="cpu, cuda, mps ... (default: the best available)")
    parser.add_argument("--precision", help="fp32, bf16, fp16 (default: the device's best)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error("--limit must be >= 0")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder")
    if args.prompts is not None and not args.prompts.is_file():
        parser.error(f"--prompts {args.prompts} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ..pipeline import BUNDLED_CHECKPOINT, HydraPipeline

    checkpoint = str(args.checkpoint or BUNDLED_CHECKPOINT)
    pipe = HydraPipeline.from_pretrained(checkpoint, device=args.device, precision=args.precision)
    suites = SUITES if args.suite == "all" else (args.suite,)
    results = evaluate(pipe, suites, limit=args.limit, seed=args.seed, images_dir=args.images,
                       prompts_file=args.prompts, steps=args.steps,
                       log=lambda message: print(message, file=sys.stderr, flush=True))
    results["checkpoint"] = checkpoint
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
