"""The rectified-flow sampler, checked against an ideal denoiser whose answer is known.

For x_sigma = (1 - sigma) x0 + sigma * noise the exact velocity at (x, sigma) is
(x - x0) / sigma; the path is straight, so Euler integration lands on x0 up to rounding,
for any number of steps and any shift. With CFG the target becomes
x0_u + g (x0_c - x0_u).
"""

import pytest
import torch

from cinema_trt.models.runner import FunctionRunner
from cinema_trt.models.sampler import (
    TIMESTEP_SCALE,
    GenerationCancelled,
    denoise,
    flow_sigmas,
    initial_noise,
)

SHAPE = (1, 4, 2, 3, 5)


def ideal_dit(x0_cond: torch.Tensor, x0_uncond: torch.Tensor) -> FunctionRunner:
    def run(inputs):
        x, sigma = inputs["latents"], inputs["timestep"] / TIMESTEP_SCALE
        target = torch.cat([x0_cond, x0_uncond])  # conditional sample first
        return {"velocity": (x - target) / sigma.view(-1, 1, 1, 1, 1)}
    return FunctionRunner("dit", run)


def test_sigmas_run_from_one_to_zero_and_shift_spends_more_steps_at_high_noise():
    linear, shifted = flow_sigmas(8, 1.0), flow_sigmas(8, 3.0)
    assert linear[0] == 1 and linear[-1] == 0 and len(linear) == 9
    assert torch.allclose(linear, torch.linspace(1, 0, 9))
    assert torch.all(shifted[1:-1] > linear[1:-1])
    assert torch.all(shifted[1:] < shifted[:-1])


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 3.0), (13, 5.0)])
def test_euler_recovers_x0_with_the_ideal_velocity(steps, shift):
    x0 = torch.randn(SHAPE)
    out = denoise(ideal_dit(x0, x0), initial_noise(SHAPE, 0), torch.zeros(2, 3, 8),
                  torch.zeros(2, 1, 4, 3, 5), steps, guidance=1.0, shift=shift)
    assert torch.allclose(out, x0, atol=1e-5)  # fp32 rounding over <= 13 steps


def test_classifier_free_guidance_extrapolates_from_uncond_towards_cond():
    x0_c, x0_u, g = torch.randn(SHAPE), torch.randn(SHAPE), 4.0
    out = denoise(ideal_dit(x0_c, x0_u), initial_noise(SHAPE, 1), torch.zeros(2, 3, 8),
                  torch.zeros(2, 1, 4, 3, 5), steps=5, guidance=g, shift=3.0)
    assert torch.allclose(out, x0_u + g * (x0_c - x0_u), atol=1e-4)


def test_progress_is_reported_once_per_step():
    calls = []
    denoise(ideal_dit(torch.zeros(SHAPE), torch.zeros(SHAPE)), initial_noise(SHAPE, 0),
            torch.zeros(2, 3, 8), torch.zeros(2, 1, 4, 3, 5), steps=3, guidance=1.0,
            shift=1.0, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_stop_request_cancels_between_steps():
    done = []
    with pytest.raises(GenerationCancelled, match="before step 3 of 5"):
        denoise(ideal_dit(torch.zeros(SHAPE), torch.zeros(SHAPE)), initial_noise(SHAPE, 0),
                torch.zeros(2, 3, 8), torch.zeros(2, 1, 4, 3, 5), steps=5, guidance=1.0,
                shift=1.0, progress=lambda i, n: done.append(i),
                should_stop=lambda: len(done) == 2)
    assert done == [1, 2]


def test_noise_is_a_function_of_the_seed_only():
    assert torch.equal(initial_noise(SHAPE, 7), initial_noise(SHAPE, 7))
    assert not torch.equal(initial_noise(SHAPE, 7), initial_noise(SHAPE, 8))


@pytest.mark.parametrize("steps", [0, -1])
def test_non_positive_steps_are_rejected(steps):
    with pytest.raises(ValueError, match=f"steps={steps} must be >= 1"):
        flow_sigmas(steps, 3.0)
