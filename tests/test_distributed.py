"""Several processes train one model: two CPU processes (torchrun, gloo, through accelerate) run the teacher
stage of the real build; the two ranks end with identical weights, equal to one process training on the
combined batch, each rank trained on its own half of every batch, and one set of logs exists.

This file is also the worker that torchrun runs (python tests/test_distributed.py OUT)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
STEPS = 10  # Builder.steps() runs at least 10
BATCH = 8


def worker(out: Path) -> None:
    from accelerate import PartialState
    from safetensors.torch import save_file

    from hydra_core.train import build

    torch.set_num_threads(1)
    tiny = build.hconfig.tiny

    def small(vocab_size):  # the tiny preset, its ViT narrowed so the test runs in seconds on a busy CPU
        config = tiny(vocab_size)
        config.tokenizer = dataclasses.replace(config.tokenizer, hidden_size=64, num_hidden_layers=2, gen_layers=1,
                                               num_attention_heads=2, intermediate_size=128, distill_layers=(1, 2),
                                               decoder_hidden_size=64, decoder_layers=1, decoder_heads=2)
        config.llm = dict(config.llm, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
        return config

    build.hconfig.tiny = small
    build.BATCH = dict(build.BATCH, teacher=BATCH)
    build.STEPS = dict(build.STEPS, teacher=STEPS)
    # The plain token mean: it splits exactly over shards. The balanced loss (the default) normalises by each
    # shard's own background and object counts, so two shards equal the combined batch only approximately.
    builder = build.Builder(out / "work", out / "ckpt", scale=1.0, seed=0, pool_size=24, teacher_loss="mean")
    state = PartialState()
    assert state.num_processes == int(os.environ.get("WORLD_SIZE", 1))
    first_losses = {}
    plan = builder.plan_teacher

    def recording_plan():  # records this rank's loss at each step, to see that the ranks' shares differ
        p = plan()
        step_fn = p.step_fn

        def recorded(step):
            losses = step_fn(step)
            first_losses[step] = float(losses["loss"].detach())
            return losses

        p.step_fn = recorded
        return p

    builder.plan_teacher = recording_plan
    builder.run_stage("teacher")
    rank = state.process_index
    save_file({k: v.contiguous() for k, v in builder.teacher.state_dict().items()}, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(first_losses))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, processes: int) -> None:
    """torchrun with gloo on the CPU (ACCELERATE_USE_CPU), which accelerate reads as a multi-CPU run. (`accelerate
    launch --cpu --num_processes 2` starts a single process unless an MPI launcher is configured.)"""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).resolve()), str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    launch(one, 1)
    # The same text tokenizer (trained by the first run) saves the second run that minute.
    shutil.copytree(one / "work" / "text_tokenizer", two / "work" / "text_tokenizer")
    launch(two, 2)
    return one, two


def test_two_processes_train_one_model_on_the_combined_batch(runs):
    one, two = runs
    rank0, rank1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    single = load_file(one / "rank0.safetensors")
    initial_moved = False
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"the ranks' {name} differ"
        torch.testing.assert_close(value, single[name], rtol=1e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    # The stage learned something (the comparison is not between two untouched models).
    done = load_file(two / "work" / "teacher" / "done.safetensors")
    assert set(done) == set(rank0)
    losses = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    single_losses = json.loads((one / "rank0.json").read_text())
    for step in map(str, range(STEPS)):
        # Each rank trains on its own half of the step's batch, and the two halves make the whole batch.
        assert losses[0][step] != losses[1][step]
        assert abs((losses[0][step] + losses[1][step]) / 2 - single_losses[step]) < 1e-4
    log = (two / "work" / "teacher" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [STEPS]  # log_every 25: the last step only, once
    assert abs(json.loads(log[0])["loss"] - json.loads((one / "work" / "teacher" / "log.jsonl").read_text()
                                                       .splitlines()[0])["loss"]) < 1e-3
    assert json.loads((two / "work" / "teacher" / "state" / "step.json").read_text()) == {"step": STEPS}


def old_lr_factor(step: int, steps: int, warmup: int) -> float:
    """The loop's hand-written schedule before it used transformers' (warmup, then cosine to 0.1x)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize("steps, warmup", [(1000, 100), (200, 20), (10, 1)])
def test_the_learning_rate_schedule_keeps_the_warmup_and_the_cosine_to_a_tenth(steps, warmup):
    from hydra_core.train.loop import LoopConfig, lr_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = lr_schedule(optimizer, LoopConfig(steps=steps, out=Path("unused"), warmup=warmup))
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        scheduler.step()
    for step in range(warmup):  # the warmup exactly
        assert rates[step] == pytest.approx(old_lr_factor(step, steps, warmup), rel=1e-12)
    for step in range(warmup, steps):  # the cosine one step ahead of the old formula, ending at 0.1x
        assert rates[step] == pytest.approx(old_lr_factor(step + 1, steps, warmup), rel=1e-12)
        assert abs(rates[step] - old_lr_factor(step, steps, warmup)) <= 0.9 * math.pi / 2 / (steps - warmup)
    assert rates[-1] == pytest.approx(0.1)
    assert rates[warmup] == pytest.approx(1.0, abs=1e-3 if steps > 100 else 0.1)


def _run(out: Path, steps: int, stop_at: int | None = None) -> tuple[torch.nn.Module, dict]:
    """A small regression through the real loop; `stop_at` interrupts it (an exception) at that step."""
    from accelerate import Accelerator

    from hydra_core.train.loop import LoopConfig, train

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def step_fn(step):
        if step == stop_at:
            raise KeyboardInterrupt
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        return {"loss": (model(x) - x.sum(1, keepdim=True)).pow(2).mean()}

    cfg = LoopConfig(steps=steps, out=out, warmup=2, save_every=3, log_every=1)
    accelerator = Accelerator(cpu=True)
    try:
        train(accelerator, {"model": model}, [{"params": list(model.parameters()), "lr": 1e-2}], step_fn, cfg)
    except KeyboardInterrupt:
        pass
    optimizer = accelerator._optimizers[0]
    return model, {"lr": optimizer.param_groups[0]["lr"], "state": optimizer.state_dict()["state"]}


def test_resume_restores_weights_optimizer_and_schedule(tmp_path):
    straight, straight_opt = _run(tmp_path / "straight", 7)
    _run(tmp_path / "interrupted", 7, stop_at=4)  # state saved at step 3, then interrupted
    assert json.loads((tmp_path / "interrupted" / "state" / "step.json").read_text()) == {"step": 3}
    resumed, resumed_opt = _run(tmp_path / "interrupted", 7)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed_opt["lr"] == straight_opt["lr"]
    for key in straight_opt["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(straight_opt["state"][key][name], resumed_opt["state"][key][name])
    steps = [json.loads(line)["step"] for line in (tmp_path / "interrupted" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
