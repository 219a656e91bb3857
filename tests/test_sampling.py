import math

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.sampling import (
    GenerationCancelled,
    StepControl,
    flow_matching_timesteps,
    rcm_trig_angles,
    rcm_timesteps,
    sample_flow_matching,
    sample_rcm,
)


def test_rcm_rectified_flow_times_sigma_max_80():
    times = rcm_timesteps(4, sigma_max=80)
    assert times[:4] == pytest.approx([0.98765, 0.93378, 0.85290, 0.60898], abs=1e-5)
    assert times[-1] == 0.0
    assert rcm_trig_angles(4)[0] == pytest.approx(math.atan(80))


@pytest.mark.parametrize("steps,expected", [(1, [0.98765]), (2, [0.98765, 0.93378]), (3, [0.98765, 0.93378, 0.85290])])
def test_rcm_schedule_prefixes(steps, expected):
    times = rcm_timesteps(steps)
    assert len(times) == steps + 1 and times[-1] == 0.0
    assert times[:-1] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("steps", [0, 5, -1])
def test_rcm_steps_out_of_range(steps):
    with pytest.raises(AliceError, match="1 to 4 steps"):
        rcm_timesteps(steps)


def test_bf16_timesteps_round_like_rcm():
    control = StepControl(timestep_dtype=torch.bfloat16)
    assert control.timestep(rcm_timesteps(4)[0], 1, torch.device("cpu")).item() == 988.0
    assert control.timestep(rcm_timesteps(4)[1], 1, torch.device("cpu")).item() == 932.0


def test_flow_matching_times_shifted():
    times = flow_matching_timesteps(4, shift=5.0)
    assert times[0] == 1.0 and times[-1] == 0.0
    u = 0.75
    assert times[1] == pytest.approx(5 * u / (1 + 4 * u))
    assert all(a > b for a, b in zip(times, times[1:]))


def delta_velocity(target):
    """The exact velocity when all data equals `target`: v = (x - target) / s."""
    return lambda x, t: (x - target) / (t.view(-1, *[1] * (x.ndim - 1)) / 1000.0)


@pytest.mark.parametrize("ode", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_rcm_recovers_data_with_exact_velocity(steps, ode):
    target = torch.randn(2, 3, 4, 5)
    out = sample_rcm(delta_velocity(target), target.shape, torch.Generator().manual_seed(0), steps=steps, ode=ode)
    assert torch.allclose(out, target, atol=1e-5)


def gaussian_velocity(sigma_d):
    """Exact E[v | x_s] for data ~ N(0, sigma_d^2): v = (x - E[x0|x]) / s."""
    def v(x, t):
        s = (t / 1000.0).view(-1, *[1] * (x.ndim - 1))
        x0_hat = (1 - s) * sigma_d**2 / ((1 - s) ** 2 * sigma_d**2 + s**2) * x
        return (x - x0_hat) / s
    return v


def test_teacher_sampler_matches_data_distribution():
    # Euler's error shrinks with the step count: 5% low at 50 steps, 0.1% at 500 (measured).
    sigma_d = 0.5
    out = sample_flow_matching(gaussian_velocity(sigma_d), None, (1, 20000), torch.Generator().manual_seed(1), steps=500, shift=3.0)
    assert out.std().item() == pytest.approx(sigma_d, rel=0.01)
    assert abs(out.mean().item()) < 0.02


def test_cfg_combines_conditional_and_unconditional():
    cond = lambda x, t: torch.ones_like(x)
    uncond = lambda x, t: torch.zeros_like(x)
    gen = lambda: torch.Generator().manual_seed(3)
    start = torch.randn((2, 3), generator=gen())
    out = sample_flow_matching(cond, uncond, (2, 3), gen(), steps=5, guidance=4.0)
    # x moves from s=1 to s=0 against a constant velocity of 4 (= 0 + 4*(1-0)).
    assert torch.allclose(out, start - 4.0, atol=1e-6)


def test_progress_per_step_and_cancel_between_steps():
    calls = []
    seen = []
    vel = lambda x, t: (seen.append(1), torch.zeros_like(x))[1]
    sample_rcm(vel, (1, 4), torch.Generator().manual_seed(0), steps=4, control=StepControl(progress=lambda d, n, x0: calls.append((d, n))))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    seen.clear()
    with pytest.raises(GenerationCancelled):
        sample_flow_matching(vel, None, (1, 4), torch.Generator().manual_seed(0), steps=10,
                             control=StepControl(should_cancel=lambda: len(seen) >= 3))
    assert len(seen) == 3  # stopped before the fourth network call


def test_seeded_and_deterministic():
    vel = gaussian_velocity(1.0)
    a = sample_rcm(vel, (1, 64), torch.Generator().manual_seed(7))
    b = sample_rcm(vel, (1, 64), torch.Generator().manual_seed(7))
    c = sample_rcm(vel, (1, 64), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_teacher_sampler_from_a_noised_latent():
    given = torch.randn(2, 3, generator=torch.Generator().manual_seed(4))
    seen_times, calls = [], []
    vel = lambda x, t: (seen_times.append(t[0].item() / 1000.0), torch.zeros_like(x))[1]
    progress = StepControl(progress=lambda d, n, x0: calls.append((d, n)))
    out = sample_flow_matching(vel, None, (2, 3), torch.Generator().manual_seed(5), steps=10, shift=1.0,
                               control=progress, start=(given, 0.35))
    # Only the steps below 0.35 run (0.3, 0.2, 0.1 after the start); a zero velocity leaves the noised latent.
    assert seen_times == pytest.approx([0.35, 0.3, 0.2, 0.1]) and calls[-1] == (4, 4)
    noise = torch.randn((2, 3), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, 0.65 * given + 0.35 * noise)
    # With the exact velocity of data concentrated at `given`, the sampler returns it from any start level.
    exact = lambda x, t: (x - given) / (t / 1000.0).view(-1, 1)
    for level in (0.2, 1.0):
        back = sample_flow_matching(exact, None, (2, 3), torch.Generator().manual_seed(6), steps=8, start=(given, level))
        assert torch.allclose(back, given, atol=1e-5)
    with pytest.raises(AliceError, match=r"start noise level must be in \(0, 1\]"):
        sample_flow_matching(vel, None, (2, 3), torch.Generator(), start=(given, 0.0))
