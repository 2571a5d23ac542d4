"""Latency of each tab's main action, as a user of the served app sees it (through gradio_client).

    python bench/app_latency.py [--checkpoint DIR] [--repeats 3]

Starts the app on 127.0.0.1 with the checkpoint (default: the bundled HYDRA-Tiny) on the CPU and
times /generate (1 image, default steps), /reconstruct and /chat (a question about an image).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import app
    from gradio_client import Client, handle_file
    from hydra_core.pipeline import HydraPipeline

    pipe = HydraPipeline.from_pretrained(args.checkpoint, device="cpu")
    demo, url = app.serve_locally(pipe)
    client = Client(url, verbose=False)
    example = handle_file(str(ROOT / "assets" / "examples" / "shapes_2.png"))
    cfg = pipe.config
    actions = {
        f"generate (1 image, {cfg.default_steps} flow steps, guidance {cfg.default_guidance}, "
        f"{cfg.tokenizer.decoder_steps} decoder steps)":
            lambda: client.predict("a photo of a red circle", 1, cfg.default_steps, cfg.default_guidance, 0, False,
                                   cfg.tokenizer.decoder_steps, api_name="/generate"),
        f"reconstruct ({cfg.tokenizer.decoder_steps} decoder steps)":
            lambda: client.predict(example, cfg.tokenizer.decoder_steps, 0, api_name="/reconstruct"),
        "chat (image + question, greedy reply)":
            lambda: client.predict("how many objects are there?", example, 16, 0.0, 1.0, 0, api_name="/chat"),
    }
    results = {}
    for name, action in actions.items():
        action()  # warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            action()
            times.append(time.perf_counter() - start)
        results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
        print(f"{name}: median {results[name]['median_s']} s", flush=True)
    demo.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
