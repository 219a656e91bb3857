"""The tiny model's autoencoder: a training-free, exactly invertible space-to-depth latent.

Why not a learned VAE: on this project's 2-core CPU a small Wan-style VAE reached only 18.9 dB held-out PSNR after
26 minutes of training (../shared/reference/tiny-model-feasibility.md) and encoding the training set would take
hours, while this map is lossless (infinite PSNR), costs microseconds and keeps the Wan VAE's shape contract:
frames 1 + 4k -> latent frames 1 + k, spatial stride s. Each latent "pixel" holds a 4-frame x s x s RGB block.
The first frame is repeated to fill its 4-frame slot, as the Wan VAE encodes the first frame on its own.

A lossy linear alternative was measured and rejected: PCA of 4x8x8 RGB blocks of rendered clips keeps 30.0 dB
overall but only 20.0 dB on object pixels at 48 components (24.1 dB at 128), short of the 25 dB gate.
The stride must keep a DiT token's values (latent channels x 2 x 2 patch) below the model width: v-prediction
has to pass the noisy input through (v = (x_s - x0) / s), and components outside the head's row space are
never denoised (seen with 8x8 blocks: 3072 values per token through a 256-wide model left samples noisy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import AliceError


@dataclass(frozen=True)
class SpaceToDepthConfig:
    spatial_stride: int = 2
    temporal_stride: int = 4
    # Global affine normalisation so latents have ~zero mean and unit variance on the training clips.
    mean: float = 0.0
    std: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


class SpaceToDepthAutoencoder:
    """`VideoAutoencoder` with latent channels 3 * temporal_stride * spatial_stride**2."""

    def __init__(self, config: SpaceToDepthConfig = SpaceToDepthConfig()) -> None:
        self.config = config
        self.spatial_stride = config.spatial_stride
        self.temporal_stride = config.temporal_stride
        self.latent_channels = 3 * config.temporal_stride * config.spatial_stride**2

    def check_video_shape(self, frames: int, height: int, width: int) -> None:
        s, ts = self.spatial_stride, self.temporal_stride
        if (frames - 1) % ts:
            raise AliceError(f"frames must be {ts}k+1 (e.g. {ts * 4 + 1}), got {frames}")
        if height % s or width % s:
            raise AliceError(f"height and width must be multiples of {s}, got {height}x{width}")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape
        self.check_video_shape(f, h, w)
        s, ts = self.spatial_stride, self.temporal_stride
        video = torch.cat([video[:, :, :1].expand(-1, -1, ts, -1, -1), video[:, :, 1:]], dim=2)
        g = video.shape[2] // ts
        x = video.reshape(b, c, g, ts, h // s, s, w // s, s)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, self.latent_channels, g, h // s, w // s)
        return (x - self.config.mean) / self.config.std

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, c, g, hl, wl = latent.shape
        if c != self.latent_channels:
            raise AliceError(f"latent has {c} channels, this autoencoder expects {self.latent_channels}")
        s, ts = self.spatial_stride, self.temporal_stride
        x = latent * self.config.std + self.config.mean
        x = x.reshape(b, 3, ts, s, s, g, hl, wl).permute(0, 1, 5, 2, 6, 3, 7, 4)
        video = x.reshape(b, 3, g * ts, hl * s, wl * s)
        # The first slot holds 4 copies of frame 0; a generated latent may disagree among them, so average.
        first = video[:, :, :ts].mean(dim=2, keepdim=True)
        return torch.cat([first, video[:, :, ts:]], dim=2).clamp(-1, 1)
