"""The bundled model through the Python pipeline (A) and through the served app with gradio_client (B).

Both sides run in this process against one loaded pipeline (the app is served on 127.0.0.1 by
`app.serve_locally`), interleaved, so the ratio B / A is what serving costs on top of the model.
The cold start runs each side in a fresh subprocess: `python app.py` until its first answered
/reconstruct, against a Python process that loads the pipeline and reconstructs the same image.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .harness import Sample, compare, row, timed

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "shapes_2.png"
PROMPT = "a photo of a red circle"
QUESTION = "how many objects are there?"
SECTION = "bundled model"


@contextlib.contextmanager
def replies_run_to_the_limit():
    """Make every chat reply last max_new_tokens (the stop token is swapped for the null token, which the
    model never writes), so tokens per second is measured over a fixed length on both sides."""
    import hydra_core.pipeline as pipeline_module
    from hydra_core.config import NULL_TOKEN

    saved = getattr(pipeline_module, "EOS_TOKEN", None)
    if saved is None:
        yield
        return
    pipeline_module.EOS_TOKEN = NULL_TOKEN
    try:
        yield
    finally:
        pipeline_module.EOS_TOKEN = saved


class DecodeCounter:
    """Counts the model's decode steps (one per generated token after the first)."""

    def __init__(self, model):
        self.count = 0
        self.model = model
        self.original = model.decode_step

    def __enter__(self):
        def counted(*args, **kwargs):
            self.count += 1
            return self.original(*args, **kwargs)

        self.model.decode_step = counted
        return self

    def __exit__(self, *exc):
        del self.model.decode_step  # back to the class's method


def chat_sample(stream, counter: DecodeCounter) -> Sample:
    """Time to the first streamed piece and decode steps per second after it."""
    counter.count = 0
    start = time.perf_counter()
    first = None
    for _ in stream():
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    first = end if first is None else first
    return {"ttft": first - start, "tps": counter.count / max(end - first, 1e-9), "tokens": counter.count}


def run(checkpoint: str | None, repeats: int, steps: int | None = None, max_new_tokens: int = 64,
        cold_start_repeats: int = 1, warmup: int = 1, log=print) -> list[dict]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    import app
    from gradio_client import Client, handle_file

    from hydra_core.pipeline import HydraPipeline

    pipe = HydraPipeline.from_pretrained(checkpoint, device="cpu")
    cfg = pipe.config
    steps = cfg.default_steps if steps is None else steps
    guidance, decoder_steps = cfg.default_guidance, cfg.tokenizer.decoder_steps
    demo, url = serve(app, pipe)
    rows: list[dict] = []
    try:
        client = Client(url, verbose=False)
        image = handle_file(str(EXAMPLE))
        sides = ("pipeline", "served app")
        log(f"  reconstruct ({decoder_steps} decoder steps)")
        rows += compare(SECTION, f"reconstruct 1 image ({decoder_steps} decoder steps)",
                        (sides[0], timed(lambda: pipe.reconstruct(str(EXAMPLE), seed=0))),
                        (sides[1], timed(lambda: client.predict(image, decoder_steps, 0, api_name="/reconstruct"))),
                        repeats, warmup)
        for k in (1, 4):
            log(f"  generate {k} image(s), {steps} steps")
            rows += compare(
                SECTION, f"generate {k} image{'s' if k > 1 else ''} ({steps} flow steps, guidance {guidance:g}, "
                f"{decoder_steps} decoder steps)",
                (sides[0], timed(lambda k=k: pipe.generate(PROMPT, num_images=k, steps=steps, seed=0))),
                (sides[1], timed(lambda k=k: client.predict(PROMPT, k, steps, guidance, 0, False, decoder_steps,
                                                            api_name="/generate"))),
                repeats, warmup)
        log(f"  chat ({max_new_tokens} tokens)")
        messages = [{"role": "user", "content": [{"type": "image", "image": str(EXAMPLE)},
                                                 {"type": "text", "text": QUESTION}]}]
        with replies_run_to_the_limit(), DecodeCounter(pipe.model) as counter:
            rows += compare(
                SECTION, "chat (image + question)",
                (sides[0], lambda: chat_sample(lambda: pipe.chat(messages, max_new_tokens=max_new_tokens), counter)),
                (sides[1], lambda: chat_sample(lambda: client.submit(QUESTION, image, max_new_tokens, 0.0, 1.0, 0,
                                                                     api_name="/chat"), counter)),
                repeats, warmup,
                metrics={"ttft": (": time to first token", "s", "b/a"),
                         "tps": (f": tokens per second ({max_new_tokens} tokens)", "tokens/s", "a/b")})
    finally:
        demo.close()
    log("  generate 4 images in bf16")
    rows.append(precision_row(pipe, checkpoint, steps, repeats))
    log("  cold start")
    rows.append(cold_start(checkpoint, cold_start_repeats))
    return rows


def serve(app, pipe, tries: int = 3):
    """app.serve_locally, tried again when Gradio's 3-second check of the new server times out (a busy machine)."""
    for attempt in range(tries):
        try:
            return app.serve_locally(pipe)
        except ValueError as error:
            if "localhost is not accessible" not in str(error) or attempt == tries - 1:
                raise
            time.sleep(1)


def precision_row(pipe, checkpoint: str | None, steps: int, repeats: int) -> dict:
    """Generate 4 images with the CPU's default float32 weights (A) and with `--precision bf16` (B)."""
    from hydra_core.pipeline import HydraPipeline

    half = HydraPipeline.from_pretrained(checkpoint, device="cpu", precision="bf16")
    a = pipe.generate(PROMPT, num_images=4, steps=steps, seed=0).latents
    b = half.generate(PROMPT, num_images=4, steps=steps, seed=0).latents
    difference = float((a - b).abs().max() / a.abs().max())
    rows = compare(SECTION, f"generate 4 images ({steps} flow steps), float32 vs bfloat16 weights",
                   ("pipeline fp32 (CPU default)", timed(lambda: pipe.generate(PROMPT, num_images=4, steps=steps))),
                   ("pipeline --precision bf16", timed(lambda: half.generate(PROMPT, num_images=4, steps=steps))),
                   repeats, warmup=0, note=f"largest latent difference {difference:.2g} of the largest latent")
    return rows[0]


# ------------------------------------------------------------------ cold start
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}


def app_cold_start(checkpoint: str | None, timeout: float = 300.0) -> float:
    """Seconds from `python app.py` to its first answered /reconstruct."""
    from gradio_client import Client, handle_file

    port = _free_port()
    command = [sys.executable, str(ROOT / "app.py"), "--device", "cpu", "--port", str(port)]
    if checkpoint:
        command += ["--checkpoint", str(checkpoint)]
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the app exited with code {server.returncode} before answering")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"the app did not answer within {timeout:.0f} s")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.1)
        client = Client(url, verbose=False)
        client.predict(handle_file(str(EXAMPLE)), 2, 0, api_name="/reconstruct")
        return time.perf_counter() - start
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def pipeline_cold_start(checkpoint: str | None) -> float:
    """Seconds from `python -c ...` to the end of a process that loads the pipeline and reconstructs once."""
    code = ("import sys; from hydra_core.pipeline import HydraPipeline; "
            "HydraPipeline.from_pretrained(sys.argv[1] or None, device='cpu').reconstruct(sys.argv[2], steps=2)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, checkpoint or "", str(EXAMPLE)], cwd=ROOT, env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def cold_start(checkpoint: str | None, repeats: int) -> dict:
    pipeline_s, app_s = [], []
    for i in range(repeats):
        if i % 2 == 0:
            pipeline_s.append(pipeline_cold_start(checkpoint))
            app_s.append(app_cold_start(checkpoint))
        else:
            app_s.append(app_cold_start(checkpoint))
            pipeline_s.append(pipeline_cold_start(checkpoint))
    return row(SECTION, "cold start to the first answered reconstruct (new process)", "python + pipeline",
               "python app.py + client", pipeline_s, app_s)
