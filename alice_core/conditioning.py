"""Image-to-video conditioning: the start image fitted to the video size, and Wan's conditioning latent
y = [frame mask (temporal-stride channels), VAE latent of the image followed by black frames].

Wan2.1 I2V and Wan2.2 I2V-A14B both take y beside the noise latent (in_dim 36 = 16 + 4 + 16). The mask marks the
frames that are given: the first latent frame stands for the first 4 video frames, of which only the first is
the image, but Wan sets all 4 of its mask channels, as diffusers and rCM do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AliceError
from .models.interfaces import VideoAutoencoder


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
