"""Flow-matching (rectified flow) objective of the teacher: x_s = (1-s) x0 + s*noise, target v = noise - x0."""

from __future__ import annotations

import torch

from ..errors import AliceError

LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "min_snr")


def shifted_times(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's time shift s = shift*u / (1 + (shift-1)*u): more training at high noise for large latents."""
    return shift * u / (1 + (shift - 1) * u)


def sample_training_times(
    batch: int, shift: float, generator: torch.Generator | None = None, uniform_fraction: float = 0.0,
    high_noise_fraction: float = 0.0, high_noise_min: float = 0.8,
) -> torch.Tensor:
    """Logit-normal times (SD3 / Wan practice), shifted; a `uniform_fraction` of them uniform in (0, 1) instead,
    and a `high_noise_fraction` uniform in (high_noise_min, 1).

    Why the uniform share: shifted logit-normal almost never draws s < 0.1 (0.2% of samples at shift 3), so a
    model trained on it alone never learns the last denoising steps and its samples keep visible noise in pixel
    space (measured on alice-tiny after 400 steps: x0 error at s = 0.02 only 16% below not denoising at all).
    Why the high-noise share: alice-tiny's teachers follow motion they can see from s = 0.85 but do not commit to
    one trajectory from pure noise, so the steps at s > 0.8 that decide the trajectory get more training."""
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    s = shifted_times(u, shift)
    uniform = torch.rand(batch, generator=generator)
    pick = torch.rand(batch, generator=generator) < uniform_fraction
    s = torch.where(pick, uniform, s)
    if high_noise_fraction > 0:  # drawn only when asked, so runs without it keep their random stream
        high = high_noise_min + (1 - high_noise_min) * torch.rand(batch, generator=generator)
        pick = torch.rand(batch, generator=generator) < high_noise_fraction
        s = torch.where(pick, high, s)
    return s


def per_frame_times(s: torch.Tensor, frames: int, fraction: float, shift: float, generator: torch.Generator | None,
                    uniform_fraction: float = 0.0, high_noise_fraction: float = 0.0,
                    high_noise_min: float = 0.8) -> torch.Tensor:
    """[B, frames] noise levels: each sample's level on every latent frame, except for a `fraction` of the samples,
    whose frames get levels of their own, drawn like the samples' (as in Diffusion Forcing, Chen et al. 2024).

    Why: with one level for the whole clip a frame's content can be read from that frame alone down to s ~ 0.85,
    so the network is rarely made to place the object in one frame from where it is in the others; alice-tiny's
    teachers moved the object correctly inside each latent frame but not from one latent frame to the next.
    Sampling is unchanged (one level for all frames), a case this training still covers."""
    levels = s[:, None].expand(-1, frames).clone()
    if fraction <= 0:
        return levels
    own = sample_training_times(s.shape[0] * frames, shift, generator, uniform_fraction, high_noise_fraction,
                                high_noise_min).view(-1, frames)
    pick = torch.rand(s.shape[0], generator=generator) < fraction
    return torch.where(pick[:, None], own, levels)


def loss_weights(s: torch.Tensor, weighting: str = "none", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight of the velocity loss at noise level s.

    "min_snr": Min-SNR-gamma (Hang et al. 2023) in its velocity form, min(SNR, gamma) / (SNR + 1), with the
    rectified-flow SNR(s) = ((1 - s) / s)^2: the low-noise steps, which are easy and fight the others for the
    network's capacity, are capped at gamma."""
    if weighting == "none":
        return torch.ones_like(s)
    if weighting == "min_snr":
        snr = ((1 - s) / s.clamp_min(1e-6)) ** 2
        return snr.clamp_max(gamma) / (snr + 1)
    raise AliceError(f"unknown loss weighting {weighting!r}; use one of {', '.join(LOSS_WEIGHTINGS)}")


def object_weights(mask: torch.Tensor, object_weight: float) -> torch.Tensor:
    """1 + object_weight on the object's latent positions (data.object_mask), 1 elsewhere.

    Why: the object covers a few per cent of a clip, so with equal weights its silhouette (what tells a square from
    a circle) is a tiny share of the loss; alice-tiny v2's teacher drew every shape as the same round blob."""
    return 1.0 + object_weight * mask


def _patch_area(model: torch.nn.Module) -> int:
    pt, ph, pw = model.config.patch_size
    if pt != 1:
        raise AliceError(f"one noise level per latent frame needs a temporal patch size of 1, not {pt}")
    return ph * pw


def flow_matching_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    context: torch.Tensor,
    s: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor | None = None,
    element_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity (each sample's error times its weight).

    s: [B] one noise level per sample, or [B, F] one per latent frame (then the DiT gets one timestep per token).
    element_weights: [B, 1, F, H, W] weights of latent positions (object_weights); each sample's error is their
    weighted mean, so the loss keeps its scale."""
    if s.ndim == 2:
        s_b = s.view(*s.shape, 1, 1).unsqueeze(1)  # [B, 1, F, 1, 1]
        t = (s * 1000.0).repeat_interleave(x0.shape[-2] * x0.shape[-1] // _patch_area(model), dim=1)
    else:
        s_b = s.view(-1, *([1] * (x0.ndim - 1)))
        t = s * 1000.0
    x_s = (1 - s_b) * x0 + s_b * noise
    v = model(x_s, t, context)
    error = (v.float() - (noise - x0)).pow(2)
    if element_weights is None:
        per_sample = error.flatten(1).mean(dim=1)
    else:
        element_weights = element_weights.to(error).expand_as(error)
        per_sample = (element_weights * error).flatten(1).sum(dim=1) / element_weights.flatten(1).sum(dim=1)
    return per_sample.mean() if weights is None else (weights.to(per_sample) * per_sample).mean()
