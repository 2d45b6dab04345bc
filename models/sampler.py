"""Rectified-flow Euler sampler with shifted timesteps and classifier-free guidance.

Shared by the in-process pipeline and the Triton orchestrator: both call `denoise` with a
DiT `Runner`, so served and local videos come from the same arithmetic.

Convention (rectified flow): x_sigma = (1 - sigma) * x0 + sigma * noise, and the DiT
predicts the velocity v = noise - x0, so one Euler step is x += (sigma_next - sigma) * v.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .runner import Runner

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]
TIMESTEP_SCALE = 1000.0  # the DiT is conditioned on sigma * 1000


class GenerationCancelled(RuntimeError):
    """Raised between denoising steps when the caller asked to stop."""


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """`steps + 1` noise levels from 1 down to 0, shifted towards high noise.

    The shift sigma' = shift * s / (1 + (shift - 1) * s) spends more steps at high noise,
    which large-resolution video models need (SD3 / CogVideoX use shift 3).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0")
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).to(torch.float32)


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded standard normal noise, generated on the CPU so every runtime gets the same."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def guided_velocity(dit: Runner, latents: torch.Tensor, sigma: float,
                    text_states: torch.Tensor, ref_latents: torch.Tensor,
                    guidance: float) -> torch.Tensor:
    """One DiT call on the batched (cond, uncond) pair, combined with CFG.

    text_states / ref_latents: (2, ...) with the conditional sample first.
    """
    batch = torch.cat([latents, latents])  # (2, C, T, h, w)
    timestep = torch.full((2,), sigma * TIMESTEP_SCALE, dtype=torch.float32)
    velocity = dit.run({"latents": batch, "timestep": timestep, "text_states": text_states,
                        "ref_latents": ref_latents})["velocity"].float()
    cond, uncond = velocity[0:1], velocity[1:2]
    return uncond + guidance * (cond - uncond)


def denoise(dit: Runner, noise: torch.Tensor, text_states: torch.Tensor,
            ref_latents: torch.Tensor, steps: int, guidance: float, shift: float,
            progress: ProgressFn | None = None, should_stop: StopFn | None = None
            ) -> torch.Tensor:
    """Integrate the flow from pure noise (sigma=1) to data (sigma=0). Returns (1, C, T, h, w)."""
    sigmas = flow_sigmas(steps, shift)
    latents = noise
    for i in range(steps):
        if should_stop is not None and should_stop():
            raise GenerationCancelled(f"cancelled before step {i + 1} of {steps}")
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        velocity = guided_velocity(dit, latents, sigma, text_states, ref_latents, guidance)
        # latents follow the runner's device (CPU noise, CUDA engines): moved once
        latents = latents.to(velocity.device) + (sigma_next - sigma) * velocity
        if progress is not None:
            progress(i + 1, steps)
    return latents
