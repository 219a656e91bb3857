"""Flow-matching (rectified flow) objective of the teacher: x_s = (1-s) x0 + s*noise, target v = noise - x0."""

from __future__ import annotations

import torch


def shifted_times(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's time shift s = shift*u / (1 + (shift-1)*u): more training at high noise for large latents."""
    return shift * u / (1 + (shift - 1) * u)


def sample_training_times(
    batch: int, shift: float, generator: torch.Generator | None = None, uniform_fraction: float = 0.0
) -> torch.Tensor:
    """Logit-normal times (SD3 / Wan practice), shifted; a `uniform_fraction` of them uniform in (0, 1) instead.

    Why the uniform share: shifted logit-normal almost never draws s < 0.1 (0.2% of samples at shift 3), so a
    model trained on it alone never learns the last denoising steps and its samples keep visible noise in pixel
    space (measured on alice-tiny after 400 steps: x0 error at s = 0.02 only 16% below not denoising at all)."""
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    s = shifted_times(u, shift)
    uniform = torch.rand(batch, generator=generator)
    pick = torch.rand(batch, generator=generator) < uniform_fraction
    return torch.where(pick, uniform, s)


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
