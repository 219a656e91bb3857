"""rCM's network math and losses (NVlabs/rcm, arXiv 2510.08431): TrigFlow wrapper, sCM consistency loss with an
exact JVP, DMD reverse-KL score regularisation, and the fake-score (critic) loss.

All functions take networks with Wan's interface `net(x_rf, t_wan, context) -> v` (rectified-flow velocity);
the TrigFlow wrapper adapts them. Times `t` here are TrigFlow angles in [0, pi/2].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp

from ..models.attention import math_attention

Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1)))


class TrigFlow:
    """TrigFlow view of a rectified-flow velocity network (sigma_data = 1).

    x_t = cos t * x0 + sin t * z equals (cos t + sin t) * x_rf at RF time s = sin t / (cos t + sin t), so the net
    sees x_t * c_in at Wan timestep c_noise = 1000 * s and predicts v = z - x0.
    """

    def __init__(self, net: Net) -> None:
        self.net = net

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cs = torch.cos(t) + torch.sin(t)
        c_in, c_noise = 1.0 / cs, torch.sin(t) / cs * 1000.0
        return self.net(x_t * _bcast(c_in, x_t), c_noise, context)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        v = self.velocity(x_t, t, context)
        cs = _bcast(torch.cos(t) + torch.sin(t), x_t)
        return (x_t - _bcast(torch.sin(t), x_t) * v) / cs

    def F(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """TrigFlow velocity F = (cos t * x_t - x0) / sin t  (= cos t * z - sin t * x0 for the true pair),
        written as ((cos t - sin t) x_t + v) / (cos t + sin t), which has no 1/sin t singularity at t -> 0."""
        v = self.velocity(x_t, t, context)
        cos_t, sin_t = _bcast(torch.cos(t), x_t), _bcast(torch.sin(t), x_t)
        return ((cos_t - sin_t) * x_t + v) / (cos_t + sin_t)


def guided(fn: Callable, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, w: float) -> torch.Tensor:
    """Classifier-free guidance of any linear-in-v quantity (F or x0): out_u + w (out_c - out_u)."""
    out_c = fn(x, t, cond)
    if uncond is None or w == 1.0:
        return out_c
    out_u = fn(x, t, uncond)
    return out_u + w * (out_c - out_u)


def sample_lognormal_angles(batch: int, p_mean: float, p_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """sCM's training times: log sigma ~ N(p_mean, p_std^2), t = atan(sigma)."""
    return torch.atan(torch.exp(p_mean + p_std * torch.randn(batch, generator=generator)))


def sample_shifted_angles(batch: int, shift: float = 5.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DMD's re-noising times: u ~ U[0,1), RF time s = shift*u / (1 + (shift-1)*u), as a TrigFlow angle."""
    u = torch.rand(batch, generator=generator)
    s = (shift * u / (1 + (shift - 1) * u)).clamp(1e-4, 1 - 1e-4)
    return torch.atan(s / (1 - s))


@dataclass
class SCMOutput:
    loss: torch.Tensor
    tangent_norm: float


@torch.no_grad()
def scm_tangent(
    student: TrigFlow,
    teacher: TrigFlow,
    x_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor | None,
    guidance: float,
    warmup_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sCM's normalised tangent g (the direction F_theta is pulled along) and its per-sample norm before scaling.

    The teacher's guided F gives the PF-ODE direction; the exact JVP of the student's F along it (tangents
    cos t sin t * F_teacher for x_t and cos t sin t for t, sCM's "JVP rearrangement") gives t_F = cos t sin t dF/dt.
    """
    cos_t, sin_t = _bcast(torch.cos(t), x_t), _bcast(torch.sin(t), x_t)
    F_teacher = guided(teacher.F, x_t, t, context, null_context, guidance)
    with math_attention():
        F_minus, t_F = jvp(lambda x, tt: student.F(x, tt, context), (x_t, t), (cos_t * sin_t * F_teacher, torch.cos(t) * torch.sin(t)))
    r = warmup_ratio  # tangent warm-up scales only the x_t term, as in rCM
    g = -cos_t * torch.sqrt(1 - r**2 * sin_t**2) * (F_minus - F_teacher) - (r * cos_t * sin_t * x_t + t_F)
    g = torch.nan_to_num(g.double(), nan=0.0)
    norm = g.flatten(1).norm(dim=1)
    return (g / _bcast(norm + 0.1, g)).to(x_t.dtype), norm


def scm_loss(
    student: TrigFlow,
    teacher: TrigFlow,
    x0: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor | None,
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: float,
    warmup_ratio: float,
    loss_scale: float = 100.0,
) -> SCMOutput:
    """Continuous-time consistency loss: loss_scale * sum_{CTHW} (F_theta - sg(F_theta) - g)^2, batch mean."""
    x_t = _bcast(torch.cos(t), x0) * x0 + _bcast(torch.sin(t), x0) * noise
    g, norm = scm_tangent(student, teacher, x_t, t, context, null_context, guidance, warmup_ratio)
    F_theta = student.F(x_t, t, context)
    per_sample = (F_theta - F_theta.detach() - g).pow(2).flatten(1).sum(dim=1)
    return SCMOutput(loss=loss_scale * per_sample.mean(), tangent_norm=float(norm.mean()))


def guidance_distillation_loss(
    student: TrigFlow,
    teacher: TrigFlow,
    x0: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Guidance distillation: the student's one-pass F regresses on the teacher's guided F at noised clips (sum of
    squares per sample, batch mean). A cheap stage before rCM: the student starts with CFG in its weights, so rCM's
    guided targets no longer have to move it there (300 rCM iterations from the teacher did not, for shape)."""
    x_t = _bcast(torch.cos(t), x0) * x0 + _bcast(torch.sin(t), x0) * noise
    with torch.no_grad():
        target = guided(teacher.F, x_t, t, context, null_context, guidance)
    return (student.F(x_t, t, context) - target).pow(2).flatten(1).sum(dim=1).mean()


def backward_simulation(
    student: TrigFlow,
    shape: tuple[int, ...],
    context: torch.Tensor,
    steps: int,
    generator: torch.Generator | None,
    rows: slice = slice(None),
    mid_angles: tuple[float, ...] = (1.5, 1.4, 1.0),
) -> torch.Tensor:
    """A student sample from pure noise in `steps` steps (the rCM few-step sampler in TrigFlow form); gradients
    flow only through the last step, as in rCM. Data parallel: `shape` is the global batch's, and this process
    samples its `rows` of it (every process draws the same noise)."""
    angles = [math.pi / 2, *mid_angles[: steps - 1]]
    x = torch.randn(shape, generator=generator)[rows].to(context.device)
    for i, angle in enumerate(angles):
        t = torch.full((x.shape[0],), angle, device=context.device)
        last = i == len(angles) - 1
        with torch.set_grad_enabled(last and torch.is_grad_enabled()):
            x0 = student.x0(x, t, context)
        if last:
            return x0
        nxt = angles[i + 1]
        x = math.cos(nxt) * x0.detach() + math.sin(nxt) * torch.randn(shape, generator=generator)[rows].to(context.device)
    raise AssertionError("unreachable")


@torch.no_grad()
def dmd_target(
    generated: torch.Tensor,
    fake_score: TrigFlow,
    teacher: TrigFlow,
    context: torch.Tensor,
    null_context: torch.Tensor | None,
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """sg(G - grad) with the DMD reverse-KL gradient grad = (x0_fake - x0_teacher) / mean|G - x0_teacher|,
    both scores taken at G re-noised to angle t."""
    g = generated.detach()
    x_t = _bcast(torch.cos(t), g) * g + _bcast(torch.sin(t), g) * noise
    x0_fake = fake_score.x0(x_t, t, context)
    x0_teacher = guided(teacher.x0, x_t, t, context, null_context, guidance)
    weight = (g - x0_teacher).abs().flatten(1).mean(dim=1).clamp_min(1e-5)
    return g - (x0_fake - x0_teacher) / _bcast(weight, g)


def dmd_loss(
    generated: torch.Tensor,
    fake_score: TrigFlow,
    teacher: TrigFlow,
    context: torch.Tensor,
    null_context: torch.Tensor | None,
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: float,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """loss_scale * |G - sg(G - grad)|^2 summed per sample, batch mean: its gradient on G is the DMD gradient."""
    target = dmd_target(generated, fake_score, teacher, context, null_context, t, noise, guidance)
    return loss_scale * (generated - target).pow(2).flatten(1).sum(dim=1).mean()


def critic_loss(fake_score: TrigFlow, generated: torch.Tensor, context: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Fake-score (critic) denoising loss on student samples: sum (G - x0_fake)^2 / sin^2 t."""
    g = generated.detach()
    x_t = _bcast(torch.cos(t), g) * g + _bcast(torch.sin(t), g) * noise
    x0_fake = fake_score.x0(x_t, t, context)
    return ((g - x0_fake).pow(2).flatten(1).sum(dim=1) / torch.sin(t) ** 2).mean()
