"""Live previews of the sampler's x0 estimate: one small RGB image per step.

Two kinds, by autoencoder:
  - exact: the autoencoder's own decode when it is cheap (alice-tiny's space-to-depth latent: a reshape);
  - linear: for the Wan2.1 VAE latent, RGB = latent . W + b per latent pixel (the idea of ComfyUI's
    `latent_rgb_factors`), with W [C, 3] and b [3] fitted by least squares on this VAE's own decodes:
    `fit_latent_rgb` decodes latents and regresses each latent pixel's mean decoded colour (over its
    temporal_stride x 8 x 8 block of output pixels) on its C channels.
The preview shows the middle latent frame of the first video of the batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .models.interfaces import VideoAutoencoder

if TYPE_CHECKING:
    from .models.vae import WanVAE

# x0 estimate [B, C, f, h, w] (normalised latent) -> uint8 image [H, W, 3]
Previewer = Callable[[torch.Tensor], np.ndarray]


def _middle_frame(x0: torch.Tensor) -> torch.Tensor:
    return x0[:1, :, x0.shape[2] // 2 : x0.shape[2] // 2 + 1]


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    return ((rgb.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass(frozen=True)
class LatentRGB:
    """A linear latent -> RGB map: rgb[3] = latent[C] @ weight[C, 3] + bias[3], in the decoder's [-1, 1] range."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, x0: torch.Tensor) -> np.ndarray:
        z = _middle_frame(x0)[0, :, 0].float()  # [C, h, w]
        rgb = torch.einsum("chw,cr->rhw", z, self.weight.to(z.device)) + self.bias.to(z.device)[:, None, None]
        return _to_uint8(rgb)


def pooled_decode(autoencoder: VideoAutoencoder, latents: torch.Tensor) -> torch.Tensor:
    """Decode and average each latent pixel's block of output pixels: [B, 3, f, h, w] colours per latent pixel.
    The first latent frame stands for one output frame, every later one for temporal_stride frames."""
    with torch.no_grad():
        video = autoencoder.decode(latents).float()
    first = video[:, :, :1]
    rest = F.avg_pool3d(video[:, :, 1:], (autoencoder.temporal_stride, 1, 1)) if video.shape[2] > 1 else video[:, :, :0]
    frames = torch.cat([first, rest], dim=2)
    s = autoencoder.spatial_stride
    return F.avg_pool3d(frames, (1, s, s))


def fit_latent_rgb(autoencoder: VideoAutoencoder, latents: torch.Tensor) -> LatentRGB:
    """Least-squares W, b with pooled_decode(z) ~= z . W + b over every latent pixel of `latents` [B, C, f, h, w]."""
    target = pooled_decode(autoencoder, latents).cpu()  # [B, 3, f, h, w]
    z = latents.float().cpu().movedim(1, -1).reshape(-1, latents.shape[1])
    design = torch.cat([z, torch.ones(len(z), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, target.movedim(1, -1).reshape(-1, 3).double()).solution
    return LatentRGB(weight=solution[:-1].float(), bias=solution[-1].float())


def exact_previewer(autoencoder: VideoAutoencoder) -> Previewer:
    """A frame of the autoencoder's own decode (for cheap autoencoders): the first frame of the middle latent
    frame's block, decoded after the latent frame before it, as a causal decoder needs (a later latent frame
    decoded alone would be taken for the video's first, which stands for one frame only)."""

    def preview(x0: torch.Tensor) -> np.ndarray:
        mid = x0.shape[2] // 2
        with torch.no_grad():
            video = autoencoder.decode(x0[:1, :, max(mid - 1, 0) : mid + 1].float())
        return _to_uint8(video[0, :, min(mid, 1)])

    return preview


def world_latents(autoencoder: VideoAutoencoder, clips: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Latents of procedural world clips (varied colours, shapes, backgrounds): the fitting set for `fit_latent_rgb`."""
    from .world import render_clip, sample_clip_spec

    frames = 1 + 2 * autoencoder.temporal_stride
    rng = np.random.default_rng(seed)
    videos = [torch.from_numpy(render_clip(sample_clip_spec(rng, size=size, frames=frames))) for _ in range(clips)]
    video = torch.stack(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [B, 3, F, H, W] in [-1, 1]
    with torch.no_grad():
        return autoencoder.encode(video).float()


# The Wan VAEs loaded in this process (weakly held): a sampler that sees only a latent space (a ComfyUI sampler node
# gets no VAE) previews with the factors fitted on one of them.
_LOADED_WAN_VAES: "weakref.WeakSet[WanVAE]" = weakref.WeakSet()


def remember_wan_vae(vae: "WanVAE") -> None:
    _LOADED_WAN_VAES.add(vae)


def previewer_for(autoencoder: VideoAutoencoder) -> Previewer | None:
    """The cheapest faithful preview for this autoencoder: exact for alice-tiny's, a fitted linear map for the Wan
    VAE (fitted once per loaded VAE, on 4 world clips: a few seconds on a CPU), None for an unknown kind."""
    from .models.space_to_depth import SpaceToDepthAutoencoder
    from .models.vae import WanVAE

    if isinstance(autoencoder, SpaceToDepthAutoencoder):
        return exact_previewer(autoencoder)
    if isinstance(autoencoder, WanVAE):
        fitted = getattr(autoencoder, "latent_rgb", None)
        if fitted is None:
            fitted = autoencoder.latent_rgb = fit_latent_rgb(autoencoder, world_latents(autoencoder))
        return fitted
    return None


def previewer_for_space(space) -> Previewer | None:
    """A previewer from a `LatentSpace` alone: alice-tiny's space-to-depth latent is rebuilt exactly (it has no
    weights); the Wan2.1 latent uses a Wan VAE loaded in this process, if any (else no preview)."""
    from .models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig

    if space.name.startswith("space-to-depth"):
        transform = "haar" if space.name.endswith(" haar") else "none"  # latent_space_of names the block transform
        mean, std = (v[0] if len(v) == 1 else v for v in (space.mean, space.std))
        config = SpaceToDepthConfig(space.spatial_stride, space.temporal_stride, mean, std, transform)
        return exact_previewer(SpaceToDepthAutoencoder(config))
    vae = next((v for v in list(_LOADED_WAN_VAES) if v.latent_channels == space.latent_channels), None)
    return previewer_for(vae) if vae is not None else None
