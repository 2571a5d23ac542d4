"""HYDRA Studio: a Gradio UI over `hydra_core` (Generate | Reconstruct | Chat | Compare).

    python app.py [--checkpoint DIR_OR_HUB_ID] [--device auto|cpu|cuda]
                  [--precision fp32|bf16|fp16|int8|nf4] [--host 127.0.0.1] [--port 7860] [--share] [--mcp]

Every flag also reads an environment variable, so a Space sets them in its settings:
HYDRA_CHECKPOINT, HYDRA_DEVICE, HYDRA_PRECISION, HYDRA_HOST (else GRADIO_SERVER_NAME),
HYDRA_PORT (else GRADIO_SERVER_PORT), HYDRA_SHARE, HYDRA_MCP.

This file is the entry point only (flags, load, launch); the page lives in `studio/`, one module per
tab (see studio/__init__.py). Public endpoints: /generate, /self_check, /reconstruct, /chat,
/noise_probe, /interpolate (with --mcp also MCP tools for agents); all model events share one queue slot (concurrency_id="model", limit 1, at most
QUEUE_SIZE waiting; beyond that a caller is told the queue is full).
"""

from __future__ import annotations

import spaces  # noqa: I001  (first: on ZeroGPU it must be imported before torch touches CUDA)

import argparse
import logging
import os

from studio.common import launch_kwargs, log
from studio.demo import build_demo, serve_locally  # noqa: F401  (serve_locally: for tests and bench)


# ------------------------------------------------------------------ command line
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="HYDRA Studio: the Gradio app for a HYDRA checkpoint.")
    parser.add_argument("--checkpoint", default=env("HYDRA_CHECKPOINT") or None,
                        help="checkpoint folder or Hub id (env HYDRA_CHECKPOINT; default: the bundled hydra-tiny)")
    parser.add_argument("--device", default=env("HYDRA_DEVICE") or "auto",
                        help="auto | cpu | cuda | cuda:N (env HYDRA_DEVICE; default auto)")
    parser.add_argument("--precision", default=env("HYDRA_PRECISION") or None,
                        choices=["fp32", "bf16", "fp16", "int8", "nf4"],
                        help="weights precision (env HYDRA_PRECISION; default: bf16/fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--offload", action="store_true", default=_env_flag("HYDRA_OFFLOAD"),
                        help="keep the LLM layers in CPU memory, streamed to the GPU per layer (env HYDRA_OFFLOAD=1)")
    parser.add_argument("--host", default=env("HYDRA_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="address to listen on (env HYDRA_HOST or GRADIO_SERVER_NAME; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(env("HYDRA_PORT") or env("GRADIO_SERVER_PORT") or 7860),
                        help="port (env HYDRA_PORT or GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--share", action="store_true", default=_env_flag("HYDRA_SHARE"),
                        help="create a public gradio.live link (env HYDRA_SHARE=1; default off)")
    parser.add_argument("--mcp", action="store_true", default=_env_flag("HYDRA_MCP"),
                        help="also serve the public endpoints as MCP tools for agents, at /gradio_api/mcp/ "
                             "(env HYDRA_MCP=1; default off)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()  # this app's own log lines (one per user mistake, tracebacks for faults)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    from hydra_core.pipeline import HydraPipeline  # the heavy imports, only when the app really starts

    device = None if args.device == "auto" else args.device
    # Cached example outputs belong to one checkpoint: start each run with an empty cache (lazy refill).
    os.environ.setdefault("GRADIO_RESET_EXAMPLES_CACHE", "True")
    # ZeroGPU: CUDA exists only inside @spaces.GPU calls, so int8 / nf4 weights are quantised here, once, by
    # bitsandbytes' CPU backend, and each GPU call only moves the packed weights (HydraPipeline.ensure_placed).
    defer = spaces.config.Config.zero_gpu and args.precision in ("int8", "nf4")
    try:
        pipeline = HydraPipeline.from_pretrained(args.checkpoint, device=device, precision=args.precision,
                                                 defer_placement=defer, offload=args.offload)
    except (ValueError, OSError) as error:  # a bad flag, a missing checkpoint: say why, without a traceback
        raise SystemExit(f"hydra studio: {error}") from error
    build_demo(pipeline).launch(server_name=args.host, server_port=args.port, share=args.share,
                                mcp_server=args.mcp, **launch_kwargs())


if __name__ == "__main__":
    main()
