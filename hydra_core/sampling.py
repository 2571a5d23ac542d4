"""The one flow-matching sampling loop, used by the pixel decoder and by text-to-image generation.

Convention (diffusers' FlowMatchEulerDiscreteScheduler): x_t = (1 - t) * x0 + t * eps, t = sigma in
[0, 1], t = 1 is pure noise, and the sampler integrates the velocity v = eps - x0. An Euler step is
x_{t'} = x_t + (t' - t) * v.

A network may output the velocity itself ("v") or the clean sample ("x", as in JiT, arXiv 2511.13720);
`to_velocity` turns either into v, and `flow_matching_loss` always takes the loss on v, so the two
differ only in what the network's last layer has to represent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from .config import PREDICTIONS

# x-prediction divides by t; near the clean end the division is clamped (JiT clamps it the same way).
MIN_T = 0.05

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (step index, t reached, x after the step, clean estimate x_t - t * v made at this step)
StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def make_scheduler(steps: int, shift: float = 1.0, start: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < start <= 1:
        raise ValueError(f"start must be in (0, 1], got {start}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # Evenly spaced sigmas start .. start/steps, then 0 (as diffusers' SD3 / Flux pipelines pass them);
    # the default spacing ends at 1/1000 and wastes the last step going from 0.001 to 0.
    scheduler.set_timesteps(sigmas=np.linspace(start, start / steps, steps))
    return scheduler


@torch.no_grad()
def sample_flow(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    steps: int,
    shift: float = 1.0,
    callback: StepCallback | None = None,
    start: float = 1.0,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = start (1: pure noise) to t = 0 with Euler steps.

    Args:
        velocity_fn: (x_t [B, ...], t [B] in [0, 1]) -> v [B, ...].
        noise: x at t = start (at 1: the noise itself; below 1: a clean sample partly noised).
        steps: number of Euler steps.
        shift: the scheduler's timestep shift (1.0 = uniform steps).
        callback: called after each step with (step index, t reached, x, clean estimate x_t - t * v).
        start: the time the integration starts from (diffusers' img2img `strength`).
    """
    scheduler = make_scheduler(steps, shift, start)
    x = noise
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(x.device)
        v = velocity_fn(x, sigma.expand(x.shape[0]))
        clean = x - sigma.to(x.dtype) * v
        x = scheduler.step(v, timestep, x).prev_sample.to(noise.dtype)
        if callback is not None:
            callback(i, float(scheduler.sigmas[i + 1]), x, clean)
    return x


def sample_logit_normal(batch: int, generator: torch.Generator | None = None, device=None,
                        loc: float | Sequence[float] = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Training times t ~ sigmoid(N(loc, scale)) (SD3's logit-normal; loc > 0 favours noise), 10% uniform.
    Several locs: an equal mixture, each time drawn around one of them (e.g. (1.5, 0): noise and detail).

    Drawn on the CPU generator, so a seeded run draws the same times on any device."""
    locs = [float(loc)] if isinstance(loc, (int, float)) else [float(x) for x in loc]
    t = compute_density_for_timestep_sampling("logit_normal", batch, logit_mean=locs[0] if len(locs) == 1 else 0.0,
                                              logit_std=scale, generator=generator)
    if len(locs) > 1:  # each time's normal shifted by its own loc: t = sigmoid(N(0, scale) + loc)
        pick = torch.randint(len(locs), (batch,), generator=generator)
        t = torch.sigmoid(torch.logit(t) + torch.tensor(locs)[pick])
    uniform = torch.rand(batch, generator=generator)
    use_uniform = torch.rand(batch, generator=generator) < 0.1
    return torch.where(use_uniform, uniform, t).to(device)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def to_velocity(prediction: str, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A network output -> the velocity eps - x0. "v": the output is v; "x": it is the clean sample,
    and v = (x_t - x0_hat) / t (t clamped at MIN_T)."""
    if prediction == "v":
        return output
    if prediction == "x":
        return (x_t - output) / _expand(t, x_t).clamp(min=MIN_T)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def clean_estimate(prediction: str, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A network output -> its estimate of the clean sample x0 (x_t - t * v for "v")."""
    return output if prediction == "x" else x_t - _expand(t, x_t) * output


def flow_matching_loss(prediction: str, output: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
                       eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the velocity, whatever the network predicts."""
    return torch.nn.functional.mse_loss(to_velocity(prediction, output.float(), x_t.float(), t), (eps - x0).float())
