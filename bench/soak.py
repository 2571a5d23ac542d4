"""Soak test: many gradio_client users at once against the served app, checking that nothing is lost.

    python bench/soak.py [--checkpoint DIR] [--users 8] [--requests 25] [--json OUT]

Starts `python app.py` on 127.0.0.1 in its own process (default: the bundled HYDRA-Tiny, CPU), works
out every user's expected answers one request at a time, warms up with one concurrent round, then runs
all users at once, each with its own gradio_client and a mix of /generate, /reconstruct and /chat calls
whose inputs are unique to that user (seed, prompt, image). It reports failures, answers that differ
from the one-at-a-time answer (an answer that went to the wrong user, or was changed by the others),
latency, and the server process's resident memory after the warm-up and after the soak.
`run_soak(url, ...)` is what tests/test_soak.py runs, smaller, in CI (there the server shares the
test's process, so the memory figures include the clients).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

KINDS = ("generate", "reconstruct", "chat")


def _digest(path: str) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()[:16]


def user_image(folder: Path, user: int, k: int) -> Path:
    """A picture that only this user sends: a coloured square whose place and colour encode (user, k)."""
    from PIL import Image

    rng = np.random.default_rng(1000 * user + k)
    pixels = np.full((64, 64, 3), rng.integers(0, 256, 3), np.uint8)
    x, y = rng.integers(4, 40, 2)
    pixels[y: y + 20, x: x + 20] = rng.integers(0, 256, 3)
    path = folder / f"user{user}_{k}.png"
    Image.fromarray(pixels).save(path)
    return path


def plan(user: int, requests: int, folder: Path) -> list[tuple[str, dict]]:
    """User `user`'s requests: (endpoint kind, arguments), cycling through the kinds."""
    colours, shapes = ("red", "blue", "green", "yellow", "purple"), ("circle", "square", "star", "triangle")
    calls = []
    for k in range(requests):
        kind = KINDS[(user + k) % len(KINDS)]
        if kind == "generate":
            prompt = f"a photo of a {colours[(user + k) % 5]} {shapes[user % 4]}"
            args = {"prompt": prompt, "num_images": 1, "steps": 4, "guidance": 3.0, "seed": 10_000 * user + k,
                    "randomize_seed": False, "decoder_steps": 2}
        elif kind == "reconstruct":
            args = {"image": str(user_image(folder, user, k)), "decoder_steps": 2, "seed": user}
        else:
            args = {"message": f"what color is the {shapes[(user + k) % 4]}?", "image": str(user_image(folder, user, k)),
                    "max_new_tokens": 8, "seed": user}
        calls.append((kind, args))
    return calls


def call(client, kind: str, args: dict):
    """One request -> a comparable answer (image digests and text), checked to belong to its request."""
    from gradio_client import handle_file

    if kind == "generate":
        gallery, seed, details = client.predict(**args, api_name="/generate")
        assert seed == args["seed"] and details["prompt"] == args["prompt"], "an answer for someone else"
        return seed, [_digest(item["image"]) for item in gallery]
    if kind == "reconstruct":
        original, reconstruction, _, psnr, _ = client.predict(**{**args, "image": handle_file(args["image"])},
                                                              api_name="/reconstruct")
        return _digest(original), _digest(reconstruction), round(psnr, 4)
    return client.predict(**{**args, "image": handle_file(args["image"])}, api_name="/chat")


def rss_mib(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def run_soak(url: str, users: int = 8, requests: int = 25, folder: Path | None = None, server_pid: int | None = None,
             warmup: int = 2, log=print) -> dict:
    """Expected answers one at a time, a concurrent warm-up round of `warmup` requests per user, then all
    users at once -> a report (see the module docstring). Memory is the RSS of `server_pid` (default:
    this process, when the server runs in it)."""
    from gradio_client import Client

    folder = Path(folder or tempfile.mkdtemp(prefix="hydra-soak-"))
    plans = {user: plan(user, requests, folder) for user in range(users)}
    reference = Client(url, verbose=False)
    start = time.perf_counter()
    expected = {user: [call(reference, kind, args) for kind, args in calls] for user, calls in plans.items()}
    log(f"expected answers: {users * requests} requests one at a time in {time.perf_counter() - start:.1f} s")
    clients = {user: Client(url, verbose=False) for user in range(users)}

    def concurrently(count: int) -> tuple[dict[int, list], float]:
        results: dict[int, list] = {user: [] for user in range(users)}
        barrier = threading.Barrier(users)

        def work(user: int) -> None:
            barrier.wait()
            for (kind, args), want in list(zip(plans[user], expected[user]))[:count]:
                began = time.perf_counter()
                try:
                    got = call(clients[user], kind, args)
                    outcome = "ok" if got == want else "wrong answer"
                except Exception as error:  # noqa: BLE001  (every failure is counted and reported)
                    outcome = f"{type(error).__name__}: {str(error)[:200]}"
                results[user].append((kind, outcome, time.perf_counter() - began))

        began = time.perf_counter()
        threads = [threading.Thread(target=work, args=(user,)) for user in range(users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results, time.perf_counter() - began

    warm, _ = concurrently(warmup)
    warm_failures = [outcome for rows in warm.values() for _, outcome, _ in rows if outcome != "ok"]
    rss_after_warmup = rss_mib(server_pid)
    log(f"warm-up: {users} x {warmup} concurrent requests, {len(warm_failures)} not ok; RSS {rss_after_warmup:.0f} MiB")
    results, seconds = concurrently(requests)
    rss_after_soak = rss_mib(server_pid)
    rows = [row for user_rows in results.values() for row in user_rows]
    latency = {kind: [s for k, _, s in rows if k == kind] for kind in KINDS}
    report = {
        "users": users, "requests_per_user": requests, "requests": len(rows),
        "ok": sum(outcome == "ok" for _, outcome, _ in rows),
        "wrong_answers": sum(outcome == "wrong answer" for _, outcome, _ in rows),
        "failures": sorted({outcome for _, outcome, _ in rows if outcome not in ("ok", "wrong answer")}),
        "failed": sum(outcome not in ("ok", "wrong answer") for _, outcome, _ in rows),
        "seconds": round(seconds, 1), "requests_per_s": round(len(rows) / seconds, 2),
        "latency_median_s": {k: round(statistics.median(v), 2) for k, v in latency.items() if v},
        "latency_max_s": {k: round(max(v), 2) for k, v in latency.items() if v},
        "warmup_not_ok": len(warm_failures),
        "rss_after_warmup_mib": round(rss_after_warmup, 1), "rss_after_soak_mib": round(rss_after_soak, 1),
        "rss_growth": round(rss_after_soak / rss_after_warmup - 1, 4),
    }
    log(json.dumps(report, indent=2))
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder or Hub id (default: the bundled one)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per user")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)

    import socket
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(ROOT / "app.py"), "--device", "cpu", "--port", str(port)]
    command += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "GRADIO_RESET_EXAMPLES_CACHE": "True"})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):  # wait for the app to answer (loading the model takes a while on a busy CPU)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                    break
            if server.poll() is not None:
                raise SystemExit("the app exited before it started serving")
            time.sleep(1)
        report = run_soak(url, args.users, args.requests, server_pid=server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    ok = report["failed"] == 0 and report["wrong_answers"] == 0 and report["rss_growth"] <= 0.10
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
