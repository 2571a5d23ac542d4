"""Command line: `python -m hydra_core info|generate|reconstruct|chat|self-check ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hydra_core", description="HYDRA core command line")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameter counts and weight memory of a preset")
    info.add_argument("--preset", default="tiny")
    info.add_argument("--json", action="store_true")

    def model_args(p):
        p.add_argument("--checkpoint", default=None, help="folder or Hub id (default: bundled HYDRA-Tiny)")
        p.add_argument("--device", default=None)
        p.add_argument("--precision", default=None)
        p.add_argument("--offload", action="store_true", help="stream the LLM layers from CPU memory")

    gen = sub.add_parser("generate", help="text to image")
    model_args(gen)
    gen.add_argument("prompt")
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--expand", action=argparse.BooleanOptionalAction, default=None,
                     help="rewrite a short prompt per image into a dense caption (default: the checkpoint's setting)")
    gen.add_argument("--out", type=Path, default=Path("outputs"))
    gen.add_argument("--self-check", action="store_true",
                     help="ask each image the questions the prompt implies and say whether it agrees")
    rec = sub.add_parser("reconstruct", help="encode and decode an image")
    model_args(rec)
    rec.add_argument("image", type=Path)
    rec.add_argument("--out", type=Path, default=Path("outputs"))
    chat = sub.add_parser("chat", help="ask about an image")
    model_args(chat)
    chat.add_argument("question")
    chat.add_argument("--image", type=Path, default=None)
    check = sub.add_parser("self-check", help="ask an image the questions a prompt implies (the model reads it)")
    model_args(check)
    check.add_argument("image", type=Path)
    check.add_argument("prompt")
    args = parser.parse_args(argv)

    if args.command == "info":
        from .config import preset
        from .info import format_report, report

        result = report(preset(args.preset))
        print(json.dumps(result, indent=2) if args.json else format_report(result))
        return 0

    from .pipeline import HydraPipeline

    pipe = HydraPipeline.from_pretrained(args.checkpoint, device=args.device, precision=args.precision,
                                         offload=args.offload)
    try:
        if args.command == "generate":
            out = pipe.generate(args.prompt, num_images=args.num_images, steps=args.steps, guidance=args.guidance,
                                seed=args.seed, expand=args.expand)
            args.out.mkdir(parents=True, exist_ok=True)
            for image, seed, text in zip(out.images, out.seeds, out.prompts):
                image.save(args.out / f"generated-seed{seed}.png")
                if text != args.prompt:
                    print(f"seed {seed} drawn from: {text}")
            print(f"{len(out.images)} image(s) in {args.out}/ (seeds {out.seeds}, {out.seconds:.2f} s)")
            if args.self_check:
                for image, seed in zip(out.images, out.seeds):
                    _print_self_check(pipe, image, args.prompt, f"seed {seed}")
        elif args.command == "self-check":
            _print_self_check(pipe, args.image, args.prompt, str(args.image))
        elif args.command == "reconstruct":
            out = pipe.reconstruct(args.image)
            args.out.mkdir(parents=True, exist_ok=True)
            out.reconstruction.save(args.out / f"{args.image.stem}-reconstruction.png")
            print(f"PSNR {out.psnr:.2f} dB, SSIM {out.ssim:.4f} ({out.seconds:.2f} s)")
        else:
            content = [{"type": "text", "text": args.question}]
            if args.image:
                content.insert(0, {"type": "image", "image": args.image})
            for piece in pipe.chat([{"role": "user", "content": content}]):
                print(piece, end="", flush=True)
            print()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_self_check(pipe, image, prompt: str, name: str) -> None:
    from .pipeline import to_pil
    from .selfcheck import agreement, self_check

    answers = self_check(pipe, to_pil(image), prompt)
    verdict = {True: "agrees with the prompt", False: "does not agree", None: "nothing to check"}[agreement(answers)]
    print(f"{name}: {verdict}")
    for a in answers:
        print(f"  {a.question}  prompt implies {a.expected!r}, model answers {a.answer!r}"
              f"{'' if a.agrees else '  <- differs'}")


if __name__ == "__main__":
    sys.exit(main())
