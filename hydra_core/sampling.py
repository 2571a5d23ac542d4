"""The one flow-matching sampling loop, used by the pixel decoder and by text-to-image generation.

Convention (diffusers' FlowMatchEulerDiscreteScheduler): x_t = (1 - t) * x0 + t * eps, t = sigma in
[0, 1], t = 1 is pure noise, and the model predicts the velocity v = eps - x0. An Euler step is
x_{t'} = x_t + (t' - t) * v.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (step index, t reached, x after the step, clean estimate x_t - t * v made at this step)
StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def make_scheduler(steps: int, shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # Evenly spaced sigmas 1 .. 1/steps, then 0 (as diffusers' SD3 / Flux pipelines pass them); the
    # default spacing ends at 1/1000 and wastes the last step going from 0.001 to 0.
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps))
    return scheduler


@torch.no_grad()
def sample_flow(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    steps: int,
    shift: float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 with Euler steps.

    Args:
        velocity_fn: (x_t [B, ...], t [B] in [0, 1]) -> v [B, ...].
        noise: x at t = 1.
        steps: number of Euler steps.
        shift: the scheduler's timestep shift (1.0 = uniform steps).
        callback: called after each step with (step index, t reached, x, clean estimate x_t - t * v).
    """
    scheduler = make_scheduler(steps, shift)
    x = noise
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(x.device)
        v = velocity_fn(x, sigma.expand(x.shape[0]))
        clean = x - sigma.to(x.dtype) * v
        x = scheduler.step(v, timestep, x).prev_sample.to(noise.dtype)
        if callback is not None:
            callback(i, float(scheduler.sigmas[i + 1]), x, clean)
    return x


def sample_logit_normal(batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training times t ~ sigmoid(N(0, 1)) (SD3's logit-normal), a few uniform for coverage."""
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    uniform = torch.rand(batch, generator=generator, device=device)
    use_uniform = torch.rand(batch, generator=generator, device=device) < 0.1
    return torch.where(use_uniform, uniform, t)
