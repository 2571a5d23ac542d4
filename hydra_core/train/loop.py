"""The one training loop: accelerate, warmup + cosine learning rate, resumable checkpoints, logs.

    python -m hydra_core.train ...      (one CPU or GPU)
    accelerate launch -m hydra_core.train ...   (several GPUs)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm


@dataclass
class LoopConfig:
    steps: int
    out: Path
    seed: int = 0
    warmup: int = 100
    save_every: int = 50
    log_every: int = 25
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    monitor_every: int = 0  # run the monitor (held-out measures) every this many steps; 0: never


def lr_factor(step: int, cfg: LoopConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(accelerator: Accelerator, modules: dict[str, torch.nn.Module], param_groups: list[dict],
          step_fn: Callable[[int], dict[str, torch.Tensor]], cfg: LoopConfig,
          extra_optimizers: list[tuple[torch.optim.Optimizer, Callable[[int], None]]] = (),
          monitor: Callable[[], dict[str, float]] | None = None) -> None:
    """Run `cfg.steps` optimizer steps of `step_fn(step) -> {"loss": ..., other logged scalars}`.

    `monitor() -> {name: value}` (held-out measures) is logged every cfg.monitor_every steps and at the end.

    State (weights of `modules`, optimizers, step) is saved to cfg.out/state every save_every steps and
    restored from there, so an interrupted stage resumes where it stopped."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    names = list(modules)
    prepared = accelerator.prepare(*modules.values(), optimizer)
    optimizer = prepared[-1]
    for name, module in zip(names, prepared[:-1]):
        modules[name] = module
    for opt, _ in extra_optimizers:
        accelerator.register_for_checkpointing(opt)
    state_dir = cfg.out / "state"
    start = 0
    if (state_dir / "step.json").is_file():
        accelerator.load_state(str(state_dir))
        start = json.loads((state_dir / "step.json").read_text())["step"]
    log = (cfg.out / "log.jsonl").open("a")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=cfg.out.name,
               disable=not accelerator.is_main_process, mininterval=5)
    tick = time.perf_counter()
    for step in bar:
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step, cfg)
        for _, extra_step in extra_optimizers:
            extra_step(step)
        losses = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_([p for g in param_groups for p in g["params"]], cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, **{k: round(float(v.detach()), 5) for k, v in losses.items()},
                      "sec_per_step": round((time.perf_counter() - tick) / cfg.log_every, 3)}
            if monitor is not None and cfg.monitor_every and (
                    (step + 1) % cfg.monitor_every == 0 or step + 1 == cfg.steps):
                record |= {k: round(float(v), 5) for k, v in monitor().items()}
            tick = time.perf_counter()
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=record["loss"])
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            accelerator.save_state(str(state_dir))
            (state_dir / "step.json").write_text(json.dumps({"step": step + 1}))
    log.close()
