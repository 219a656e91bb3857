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

block_transform "haar" applies an orthonormal Haar transform to each colour's (frames x s x s) block, so a latent
channel is a block average or a detail (edge / change) coefficient instead of one pixel; normalised per channel
(mean/std given per channel), the low-energy detail channels are scaled up in the latent, and an error of the
DiT there is scaled down in the pixels. Still exactly invertible and training-free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import AliceError


@dataclass(frozen=True)
class SpaceToDepthConfig:
    spatial_stride: int = 2
    temporal_stride: int = 4
    # Affine normalisation so latents have ~zero mean and unit variance on the training clips: one number for all
    # channels, or one per latent channel.
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    block_transform: str = "none"  # or "haar"

    def __post_init__(self) -> None:
        if self.block_transform not in BLOCK_TRANSFORMS:
            raise AliceError(f"unknown block_transform {self.block_transform!r}; use one of {', '.join(BLOCK_TRANSFORMS)}")
        channels = 3 * self.temporal_stride * self.spatial_stride**2
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(value) != channels:
                    raise AliceError(f"space-to-depth {name} has {len(value)} entries; the latent has {channels} channels")
                object.__setattr__(self, name, tuple(float(v) for v in value))  # JSON lists back to tuples
        for n in (self.spatial_stride, self.temporal_stride):
            if self.block_transform == "haar" and n & (n - 1):
                raise AliceError(f"the Haar block transform needs power-of-two strides, got {n}")

    def to_dict(self) -> dict:
        return asdict(self)


BLOCK_TRANSFORMS: tuple[str, ...] = ("none", "haar")


def haar_matrix(n: int) -> torch.Tensor:
    """Orthonormal Haar matrix [n, n] (n a power of two): row 0 the average, the others differences at each scale."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        m = h.shape[0]
        h = torch.cat([torch.kron(h, torch.ones(1, 2, dtype=torch.float64)),
                       torch.kron(torch.eye(m, dtype=torch.float64), torch.tensor([[1.0, -1.0]], dtype=torch.float64))])
        h = h / math.sqrt(2)
    return h


def block_haar_matrix(temporal_stride: int, spatial_stride: int) -> torch.Tensor:
    """The orthonormal transform of one colour's (frame, row, column) block, flattened column-fastest."""
    s = haar_matrix(spatial_stride)
    return torch.kron(haar_matrix(temporal_stride), torch.kron(s, s))


def latent_affine(config: SpaceToDepthConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [C, C], a [C]) with latent = A @ block + a for one latent pixel, block being its C pixel values in the
    raw space-to-depth channel order (colour, frame, row, column): how two latents of the same strides relate."""
    c = 3 * config.temporal_stride * config.spatial_stride**2
    transform = torch.eye(c, dtype=torch.float64)
    if config.block_transform == "haar":
        transform = torch.block_diag(*[block_haar_matrix(config.temporal_stride, config.spatial_stride)] * 3)
    std = torch.broadcast_to(torch.tensor(config.std, dtype=torch.float64), (c,))
    mean = torch.broadcast_to(torch.tensor(config.mean, dtype=torch.float64), (c,))
    return transform / std[:, None], -mean / std


class SpaceToDepthAutoencoder:
    """`VideoAutoencoder` with latent channels 3 * temporal_stride * spatial_stride**2."""

    def __init__(self, config: SpaceToDepthConfig = SpaceToDepthConfig()) -> None:
        self.config = config
        self.spatial_stride = config.spatial_stride
        self.temporal_stride = config.temporal_stride
        self.latent_channels = 3 * config.temporal_stride * config.spatial_stride**2
        shape = (-1, 1, 1, 1)
        self.mean = torch.tensor(config.mean, dtype=torch.float32).reshape(shape)
        self.std = torch.tensor(config.std, dtype=torch.float32).reshape(shape)
        self.block = None
        if config.block_transform == "haar":
            self.block = block_haar_matrix(config.temporal_stride, config.spatial_stride).float()

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
        x = self._transform(x, self.block)
        return (x - self.mean.to(x)) / self.std.to(x)

    def _transform(self, x: torch.Tensor, matrix: torch.Tensor | None) -> torch.Tensor:
        """Apply `matrix` to each colour's block of channels (identity without a block transform)."""
        if matrix is None:
            return x
        b, c, g, hl, wl = x.shape
        x = torch.einsum("ij,bkjghw->bkighw", matrix.to(x), x.reshape(b, 3, c // 3, g, hl, wl))
        return x.reshape(b, c, g, hl, wl)

    def encode_unnormalised(self, video: torch.Tensor) -> torch.Tensor:
        """The latent before normalisation (to measure its per-channel statistics)."""
        return self.encode(video) * self.std.to(video) + self.mean.to(video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, c, g, hl, wl = latent.shape
        if c != self.latent_channels:
            raise AliceError(f"latent has {c} channels, this autoencoder expects {self.latent_channels}")
        s, ts = self.spatial_stride, self.temporal_stride
        x = latent * self.std.to(latent) + self.mean.to(latent)
        x = self._transform(x, None if self.block is None else self.block.T)
        x = x.reshape(b, 3, ts, s, s, g, hl, wl).permute(0, 1, 5, 2, 6, 3, 7, 4)
        video = x.reshape(b, 3, g * ts, hl * s, wl * s)
        # The first slot holds 4 copies of frame 0; a generated latent may disagree among them, so average.
        first = video[:, :, :ts].mean(dim=2, keepdim=True)
        return torch.cat([first, video[:, :, ts:]], dim=2).clamp(-1, 1)
