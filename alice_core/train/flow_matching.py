"""Flow-matching (rectified flow) objective of the teacher: x_s = (1-s) x0 + s*noise, target v = noise - x0."""

from __future__ import annotations

import torch


def shifted_times(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's time shift s = shift*u / (1 + (shift-1)*u): more training at high noise for large latents."""
    return shift * u / (1 + (shift - 1) * u)


def sample_training_times(batch: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal times (SD3 / Wan practice), then shifted."""
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    return shifted_times(u, shift)


def flow_matching_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    context: torch.Tensor,
    s: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity."""
    s_b = s.view(-1, *([1] * (x0.ndim - 1)))
    x_s = (1 - s_b) * x0 + s_b * noise
    v = model(x_s, s * 1000.0, context)
    return (v.float() - (noise - x0)).pow(2).mean()
