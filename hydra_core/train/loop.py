"""The one training loop: accelerate, warmup + cosine learning rate, resumable checkpoints, logs.

    python -m hydra_core.train ...                      (one CPU or GPU)
    accelerate launch -m hydra_core.train ...           (several GPUs, or --cpu --num_processes N)

Several processes train one model: each step runs as the forward of one module that accelerate
prepared (DistributedDataParallel when there are several processes), so the gradients of every
trained parameter are averaged across processes before the optimizer steps; each process feeds its
own share of the step's batch (see `shard`); only the main process writes the log and `step.json`
(accelerate's `save_state` writes the weights, optimizer and scheduler state once).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

MIN_LR_RATE = 0.1  # the cosine ends at 0.1x each group's learning rate


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


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: LoopConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 1/warmup of each group's rate over `warmup` steps, then a cosine to 0.1x.

    transformers' variant with `warmup_lr_rate` reproduces the warmup of step s, (s + 1) / warmup,
    exactly; its cosine reaches 0.1x at the last step (progress (s - warmup + 1) / (steps - warmup)).
    The plain `get_cosine_with_min_lr_schedule_with_warmup` would start at a learning rate of 0."""
    return get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps, min_lr_rate=MIN_LR_RATE,
        warmup_lr_rate=1 / max(1, cfg.warmup))


class StepModule(nn.Module):
    """One training step's forward pass (`step_fn(step)`) as a module's forward.

    HYDRA's losses are methods (ntp_loss, flow_loss, decoder_losses), not `forward`, and
    DistributedDataParallel only averages the gradients of a forward that ran through it: so the
    modules a stage trains are held here and the whole step runs through the prepared wrapper. With one
    module, `state_dict` is that module's own (the saved state keeps the module's parameter names)."""

    def __init__(self, modules: dict[str, nn.Module], step_fn: Callable[[int], dict[str, torch.Tensor]]):
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.step_fn = step_fn

    def forward(self, step: int) -> dict[str, torch.Tensor]:
        return self.step_fn(step)

    def _single(self) -> nn.Module | None:
        return next(iter(self.parts.values())) if len(self.parts) == 1 else None

    def state_dict(self, *args, **kwargs):
        single = self._single()
        return single.state_dict(*args, **kwargs) if single is not None else super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        single = self._single()
        target = single if single is not None else super()
        return target.load_state_dict(state_dict, strict=strict, assign=assign)


def shard(accelerator: Accelerator, batch):
    """This process's contiguous share of a batch drawn whole on every process: tensors, arrays and lists
    are cut along their first dimension, dicts value by value. One process gets the batch itself."""
    if accelerator.num_processes == 1:
        return batch
    if isinstance(batch, dict):
        return {k: shard(accelerator, v) for k, v in batch.items()}
    n, rank, world = len(batch), accelerator.process_index, accelerator.num_processes
    return batch[rank * n // world:(rank + 1) * n // world]


def train(accelerator: Accelerator, modules: dict[str, torch.nn.Module], param_groups: list[dict],
          step_fn: Callable[[int], dict[str, torch.Tensor]], cfg: LoopConfig,
          extra_optimizers: list[tuple[torch.optim.Optimizer, Callable[[int], None]]] = (),
          monitor: Callable[[], dict[str, float]] | None = None,
          aux_modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Run `cfg.steps` optimizer steps of `step_fn(step) -> {"loss": ..., other logged scalars}`.

    `modules` hold the trained parameters; `step_fn` runs inside the prepared StepModule's forward.
    `aux_modules` (e.g. a discriminator with its own optimizer in `extra_optimizers`) are prepared on
    their own and replaced in the dict by the prepared module, which `step_fn` should read at call time.
    `monitor() -> {name: value}` (held-out measures) is logged every cfg.monitor_every steps and at the end.

    State (weights of `modules` and `aux_modules`, optimizers, the learning-rate schedule, step) is saved
    to cfg.out/state every save_every steps and restored from there, so an interrupted stage resumes
    where it stopped."""
    aux_modules = aux_modules if aux_modules is not None else {}
    main = accelerator.is_main_process
    if main:
        cfg.out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    scheduler = lr_schedule(optimizer, cfg)
    step_module = StepModule(modules, step_fn)
    aux_names = list(aux_modules)
    # Same order as before StepModule existed (trained modules, then the others, then the optimizer), so
    # states saved then still load.
    prepared = accelerator.prepare(step_module, *aux_modules.values(), optimizer)
    step_module, optimizer = prepared[0], prepared[-1]
    for name, module in zip(aux_names, prepared[1:-1]):
        aux_modules[name] = module
    for opt, _ in extra_optimizers:
        accelerator.register_for_checkpointing(opt)
    state_dir = cfg.out / "state"
    start = 0
    if (state_dir / "step.json").is_file():
        start = json.loads((state_dir / "step.json").read_text())["step"]
        saved_custom = [f for f in os.listdir(state_dir) if f.startswith("custom_checkpoint_")]
        if len(saved_custom) > len(extra_optimizers):
            accelerator.register_for_checkpointing(scheduler)
            accelerator.load_state(str(state_dir))
        else:  # a state saved before the schedule was checkpointed: its schedule is a function of the step
            accelerator.load_state(str(state_dir))
            accelerator.register_for_checkpointing(scheduler)
            for _ in range(start):
                scheduler.step()
    else:
        accelerator.register_for_checkpointing(scheduler)
    trained = [p for g in param_groups for p in g["params"]]
    log_path = cfg.out / "log.jsonl"
    if main and log_path.is_file():  # records past the restored state are trained again: drop them
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start]
        log_path.write_text("".join(line + "\n" for line in kept))
    log = log_path.open("a") if main else None
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=cfg.out.name,
               disable=not main, mininterval=5)
    tick = time.perf_counter()
    for step in bar:
        for _, extra_step in extra_optimizers:
            extra_step(step)
        losses = step_module(step)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(trained, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            # Each process's losses are of its own share; the log holds their mean over processes.
            values = accelerator.reduce({k: v.detach().float().reshape(()) for k, v in losses.items()
                                         if torch.is_tensor(v)}, reduction="mean")
            if main:
                record = {"step": step + 1, **{k: round(float(v), 5) for k, v in values.items()},
                          "sec_per_step": round((time.perf_counter() - tick) / cfg.log_every, 3)}
                if monitor is not None and cfg.monitor_every and (
                        (step + 1) % cfg.monitor_every == 0 or step + 1 == cfg.steps):
                    record |= {k: round(float(v), 5) for k, v in monitor().items()}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=record["loss"])
            tick = time.perf_counter()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            accelerator.save_state(str(state_dir))  # every process: accelerate writes once, RNG per process
            if main:
                (state_dir / "step.json").write_text(json.dumps({"step": step + 1}))
            accelerator.wait_for_everyone()
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()
