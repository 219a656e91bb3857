"""Image-to-video conditioning: the start image fitted to the video size, and Wan's two ways of giving it.

Wan2.1 I2V and Wan2.2 I2V-A14B take y = [frame mask (temporal-stride channels), VAE latent of the image followed
by black frames] beside the noise latent (in_dim 36 = 16 + 4 + 16). The mask marks the frames that are given: the
first latent frame stands for the first 4 video frames, of which only the first is the image, but Wan sets all 4
of its mask channels, as diffusers and rCM do.

Wan2.2 TI2V-5B instead puts the image's clean latent in place of the first latent frame (`FirstFrame`) and gives
that frame's tokens timestep 0, the others the step's time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AliceError
from .models.interfaces import VideoAutoencoder
from .models.latent_space import LatentSpace

TI2V_CHANNELS = 48  # Wan2.2 TI2V-5B's latent: text-to-video, or image-to-video with the image as first frame


def fit_image(image: np.ndarray | torch.Tensor, width: int, height: int) -> torch.Tensor:
    """An RGB image (uint8 [H, W, 3], or float [3, H, W] in [-1, 1]) scaled to cover width x height and
    centre-cropped to it: [1, 3, height, width] float32 in [-1, 1]."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise AliceError(f"start image must be an RGB picture (uint8 [H, W, 3]), got {image.dtype} {image.shape}")
        x = torch.tensor(image[..., :3]).permute(2, 0, 1).float() / 127.5 - 1  # a copy: the array may be read-only
    else:
        x = image.float()
        if x.ndim != 3 or x.shape[0] != 3:
            raise AliceError(f"start image tensor must be [3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
    h, w = x.shape[1:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)[0]
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[None, :, top : top + height, left : left + width].clamp(-1, 1)


def image_condition(autoencoder: VideoAutoencoder, image: torch.Tensor, frames: int) -> torch.Tensor:
    """y for a video of `frames` frames starting at `image` [B, 3, H, W] in [-1, 1]:
    [B, temporal_stride + latent_channels, 1 + (frames - 1) / stride, H / s, W / s]."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise AliceError(f"start image must be [B, 3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
    b, _, h, w = image.shape
    video = torch.cat([image[:, :, None], image.new_zeros(b, 3, frames - 1, h, w)], dim=2)
    with torch.inference_mode():
        latent = autoencoder.encode(video).float()
    mask = torch.zeros(b, autoencoder.temporal_stride, *latent.shape[2:], device=latent.device)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, latent], dim=1)


@dataclass(frozen=True)
class FirstFrame:
    """TI2V: the start image's clean latent [B, C, 1, h, w], held fixed as the first latent frame."""

    latent: torch.Tensor

    @classmethod
    def encode(cls, autoencoder: VideoAutoencoder, image: torch.Tensor) -> "FirstFrame":
        with torch.inference_mode():
            return cls(autoencoder.encode(image[:, :, None]).float())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x with its first latent frame replaced by the image's."""
        return torch.cat([self.latent.to(x), x[:, :, 1:]], dim=2)

    def timesteps(self, t: torch.Tensor, x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
        """Per-token timesteps [B, L]: 0 for the first frame's tokens, t (per sample) for the rest."""
        pt, ph, pw = patch_size
        frames, per_frame = x.shape[2] // pt, (x.shape[3] // ph) * (x.shape[4] // pw)
        given = torch.zeros(frames, per_frame, device=x.device)
        given[: 1 if pt == 1 else 0] = 1.0  # with a temporal patch > 1 the first token frame mixes frames
        return t[:, None] * (1 - given.flatten())[None]


@dataclass(frozen=True)
class ImageCondition:
    """What a video starting from an image gives the DiT: Wan's y, the CLIP tokens (Wan2.1 I2V), or TI2V's fixed
    first frame."""

    y: torch.Tensor | None = None
    clip: torch.Tensor | None = None
    first_frame: FirstFrame | None = None


def start_image_use(cfg, space: LatentSpace) -> str:
    """'needed' (image-to-video: y beside the noise, in_dim > out_dim), 'optional' (Wan2.2 TI2V-5B on the Wan2.2
    VAE's latents: the image as the first latent frame) or 'none' (text-to-video) for a DiT of architecture `cfg`
    sampling in `space` (alice-tiny's 48-channel space-to-depth latent is no TI2V)."""
    if cfg.in_dim > cfg.out_dim:
        return "needed"
    return "optional" if cfg.out_dim == TI2V_CHANNELS and space.name.startswith("Wan") else "none"


def start_image_condition(name: str, cfg, autoencoder: VideoAutoencoder, image_encoder,
                          image: np.ndarray | torch.Tensor, width: int, height: int, frames: int,
                          device: torch.device | str = "cpu") -> ImageCondition:
    """What `image` (uint8 [H, W, 3] or float [3, H, W] in [-1, 1]), fitted to width x height, gives a DiT of
    architecture `cfg` for a video of `frames` frames: TI2V's first frame, or y (+ CLIP tokens for Wan2.1 I2V)."""
    start = fit_image(image, width, height).to(device)
    if cfg.in_dim == cfg.out_dim:
        return ImageCondition(first_frame=FirstFrame.encode(autoencoder, start))
    if cfg.image_dim is not None:
        check_image_encoder(name, cfg.image_dim, image_encoder)
    clip = image_encoder.encode(start) if cfg.image_dim is not None else None
    return ImageCondition(y=image_condition(autoencoder, start, frames), clip=clip)


def check_image_encoder(name: str, image_dim: int, encoder) -> None:
    """A Wan2.1 I2V model needs the CLIP vision encoder, with tokens as wide as its `img_emb` takes."""
    if encoder is None:
        raise AliceError(
            f"{name!r} is a Wan2.1 image-to-video model: it needs the CLIP vision encoder; pass --clip-vision "
            "PATH (ComfyUI's clip_vision_h.safetensors or a transformers CLIPVisionModel folder)"
        )
    if encoder.width != image_dim:
        raise AliceError(
            f"the CLIP vision encoder gives {encoder.width}-wide tokens but {name!r} takes {image_dim} "
            "(CLIP ViT-H/14): pass the CLIP file Wan ships"
        )

