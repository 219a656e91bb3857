"""Samplers: rCM's few-step consistency sampler and the teacher's flow-matching sampler with CFG.

Both work on rectified-flow (RF) latents x_s = (1 - s) x0 + s * noise with a network that predicts the velocity
v = noise - x0 at Wan's timestep s * 1000. Progress is reported per step; cancellation is checked between steps.

Wan2.2 A14B models are two experts: the velocity (and, for the teacher, the guidance) is then an `Experts` pair and
each step uses the high-noise one while its time s >= boundary, the low-noise one below (Wan, diffusers and rCM
all compare the step's time with the boundary this way). `StepControl.experts` records the expert of each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from .errors import AliceError

# velocity(x, timestep[B] in 0..1000) -> v ; the text condition is bound by the caller.
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# progress(step_done, total_steps, x0_estimate)
ProgressFn = Callable[[int, int, torch.Tensor], None]

RCM_MID_ANGLES = (1.5, 1.4, 1.0)  # TrigFlow angles after the first step (NVlabs/rcm, TurboDiffusion)
RCM_MAX_STEPS = 4


class GenerationCancelled(AliceError):
    """Raised between steps when the caller asked to stop."""


T = TypeVar("T")


@dataclass(frozen=True)
class Experts(Generic[T]):
    """One value per Wan2.2 expert: `high` for steps at RF time s >= boundary, `low` below (boundary in Wan's 0..1
    timestep: 0.875 for T2V-A14B, 0.9 for I2V-A14B)."""

    high: T
    low: T
    boundary: float

    def __post_init__(self) -> None:
        if not 0.0 < self.boundary < 1.0:
            raise AliceError(f"the expert boundary must be between 0 and 1 (Wan2.2: 0.875 T2V, 0.9 I2V), got {self.boundary}")

    def name_at(self, s: float) -> str:
        return "high" if s >= self.boundary else "low"

    def at(self, s: float) -> T:
        return self.high if s >= self.boundary else self.low


def at_time(value: "T | Experts[T]", s: float) -> T:
    """The value a step at time s uses: the expert's own for an `Experts` pair, else `value` itself."""
    return value.at(s) if isinstance(value, Experts) else value


def trig_to_rf(angle: float) -> float:
    """TrigFlow angle t -> rectified-flow time s = sin t / (cos t + sin t)."""
    return math.sin(angle) / (math.cos(angle) + math.sin(angle))


def rcm_trig_angles(steps: int, sigma_max: float = 80.0) -> list[float]:
    """[atan(sigma_max), 1.5, 1.4, 1.0][:steps] followed by 0."""
    if not 1 <= steps <= RCM_MAX_STEPS:
        raise AliceError(f"rCM sampling takes 1 to {RCM_MAX_STEPS} steps, got {steps}; use --steps 1..4")
    if not 0 < sigma_max < math.inf:  # also refuses NaN
        raise AliceError(f"sigma_max must be positive, got {sigma_max}")
    return [math.atan(sigma_max), *RCM_MID_ANGLES[: steps - 1], 0.0]


def rcm_timesteps(steps: int, sigma_max: float = 80.0) -> list[float]:
    """The rCM schedule as rectified-flow times in [0, 1] (0.98765, 0.93378, 0.85290, 0.60898, 0 for 4 steps)."""
    return [trig_to_rf(a) for a in rcm_trig_angles(steps, sigma_max)]


def flow_matching_timesteps(steps: int, shift: float = 5.0) -> list[float]:
    """Uniform times 1 -> 0 warped by the flow shift s' = shift*s / (1 + (shift-1)*s), ending at 0."""
    if steps < 1:
        raise AliceError(f"teacher sampling needs at least 1 step, got {steps}")
    if not 0 < shift < math.inf:
        raise AliceError(f"shift must be positive, got {shift}")
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * times / (1 + (shift - 1) * times)).tolist()


@dataclass
class StepControl:
    """Per-step hooks shared by both samplers."""

    progress: ProgressFn | None = None
    should_cancel: Callable[[], bool] | None = None
    # Round the network's timestep like the model's training did (rCM feeds bf16 timesteps: 987.65 -> 988).
    timestep_dtype: torch.dtype | None = None
    # Filled in by the samplers: the expert ("high" / "low") each step used, for two-expert models.
    experts: list[str] = field(default_factory=list)

    def velocity_at(self, velocity: "VelocityFn | Experts[VelocityFn]", s: float) -> VelocityFn:
        """The network a step at time s runs; records which expert that is."""
        if isinstance(velocity, Experts):
            self.experts.append(velocity.name_at(s))
        return at_time(velocity, s)

    def timestep(self, s: float, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.full((batch,), s * 1000.0, device=device)
        return t.to(self.timestep_dtype).float() if self.timestep_dtype is not None else t

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCancelled("generation cancelled")

    def report(self, done: int, total: int, x0: torch.Tensor) -> None:
        if self.progress is not None:
            self.progress(done, total, x0)


def seeded_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian noise drawn on the CPU from `generator`, so a seed gives the same video on every device."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def _start_noise(noise: torch.Tensor | None, shape: Sequence[int], generator: torch.Generator, device) -> torch.Tensor:
    """The seed's starting noise, or `noise` in its place; the seed's draw is made either way, so the noise of later
    steps (rCM re-noising) is the same stream whether or not the start was given."""
    seeded = seeded_noise(shape, generator, device)
    if noise is None:
        return seeded
    if tuple(noise.shape) != tuple(shape):
        raise AliceError(f"starting noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    return noise.float().to(device)


def sample_rcm(
    velocity: VelocityFn | Experts[VelocityFn],
    shape: Sequence[int],
    generator: torch.Generator,
    steps: int = 4,
    sigma_max: float = 80.0,
    ode: bool = False,
    device: torch.device | str = "cpu",
    control: StepControl | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """rCM few-step sampling: x0 = x - s*v, then re-noise to the next time with fresh seeded noise
    (or, with ode=True, a deterministic Euler step x <- x - (s - s_next) * v). `noise`: the starting noise
    (default: drawn from `generator`)."""
    control = control or StepControl()
    times = rcm_timesteps(steps, sigma_max)
    x = times[0] * _start_noise(noise, shape, generator, device)
    for i, (s_cur, s_next) in enumerate(zip(times[:-1], times[1:])):
        control.check_cancel()
        v = control.velocity_at(velocity, s_cur)(x, control.timestep(s_cur, shape[0], x.device)).float()
        x0 = x - s_cur * v
        if ode:
            x = x - (s_cur - s_next) * v
        else:
            x = (1 - s_next) * x0 + s_next * seeded_noise(shape, generator, device) if s_next > 0 else x0
        control.report(i + 1, steps, x0)
    return x


def sample_flow_matching(
    velocity_cond: VelocityFn | Experts[VelocityFn],
    velocity_uncond: VelocityFn | Experts[VelocityFn] | None,
    shape: Sequence[int],
    generator: torch.Generator,
    steps: int = 50,
    guidance: float | Experts[float] = 5.0,
    shift: float = 5.0,
    device: torch.device | str = "cpu",
    control: StepControl | None = None,
    start: tuple[torch.Tensor, float] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler flow-matching sampler with classifier-free guidance v = v_u + w (v_c - v_u) (the teacher's sampler).

    `start` = (latent, noise level s0 in (0, 1]) begins from that latent noised to s0 and runs only the steps at or
    below s0 (SDEdit): how much of a given video the model keeps, e.g. to find the noise level where it loses it.
    With two experts, `velocity_cond`, `velocity_uncond` and `guidance` may each be an `Experts` pair (Wan2.2 T2V
    guides the high-noise expert with 4 and the low-noise one with 3). `noise`: the starting noise (default: drawn
    from `generator`)."""
    control = control or StepControl()
    times = flow_matching_timesteps(steps, shift)
    x = _start_noise(noise, shape, generator, device)
    if start is not None:
        latent, level = start
        if not 0.0 < level <= 1.0:
            raise AliceError(f"start noise level must be in (0, 1], got {level}")
        times = [level] + [t for t in times if t < level]
        x = (1 - level) * latent.to(x) + level * x
    for i, (s_cur, s_next) in enumerate(zip(times[:-1], times[1:])):
        control.check_cancel()
        t = control.timestep(s_cur, shape[0], x.device)
        v = control.velocity_at(velocity_cond, s_cur)(x, t).float()
        w = at_time(guidance, s_cur)
        if velocity_uncond is not None and w != 1.0:
            v_u = at_time(velocity_uncond, s_cur)(x, t).float()
            v = v_u + w * (v - v_u)
        x0 = x - s_cur * v
        x = x + (s_next - s_cur) * v
        control.report(i + 1, len(times) - 1, x0)
    return x
