"""The Wan2.2 VAE's own parts: 2x2 pixel patchify and the residual stages whose shortcuts average (encoder) or
duplicate (decoder) pixels and frames around the convolutions, in the official `wan/modules/vae2_2.py` layout
(`encoder.downsamples.{i}.downsamples.{j}`, `decoder.upsamples.{i}.upsamples.{j}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import WanVAEConfig
from .vae_layers import Cache, Cached, CausalConv3d, Resample, ResidualBlock, _head, _middle, _run


def patchify(video: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, C*p*p, F, H/p, W/p], channels ordered (c, column offset, row offset) as Wan does."""
    b, c, f, h, w = video.shape
    x = video.view(b, c, f, h // p, p, w // p, p)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`."""
    b, cpp, f, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, f, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), f, h * p, w * p)


def _space_time_to_channels(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*ft*fs*fs, T/ft, H/fs, W/fs]: each output channel group holds one offset."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * ft * fs * fs, t // ft, h // fs, w // fs)


class AverageDown(nn.Module):
    """Parameter-free shortcut: fold ft x fs x fs neighbourhoods into channels, then average channel groups down
    to out_dim. A chunk whose frame count is not a multiple of ft is padded with zero frames in front."""

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.group = in_dim * ft * fs * fs // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % self.ft, 0))
        x = _space_time_to_channels(x, self.ft, self.fs)
        return x.unflatten(1, (self.out_dim, self.group)).mean(dim=2)


class DuplicateUp(Cached):
    """Parameter-free shortcut: repeat channels and unfold them into ft x fs x fs neighbourhoods. On the first
    latent frame only the last of the ft frames is kept, matching the main path's single first frame."""

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.repeats = out_dim * ft * fs * fs // in_dim

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        b, _, t, h, w = x.shape
        ft, fs = self.ft, self.fs
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.out_dim, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        first = self not in cache
        cache[self] = None  # seen: later chunks keep all their frames
        return x[:, :, ft - 1 :] if first else x


class DownStage(Cached):
    """Residual blocks and an optional down-sampler, plus the averaging shortcut around them."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AverageDown(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return _run(self.downsamples, x, cache) + self.avg_shortcut(x)


class UpStage(Cached):
    """Residual blocks and an optional up-sampler that keeps the channels, plus the duplicating shortcut."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.avg_shortcut = DuplicateUp(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        out = _run(self.upsamples, x, cache)
        return out if self.avg_shortcut is None else out + self.avg_shortcut(x, cache)


class ResidualEncoder3d(nn.Module):
    """Patchified video [B, 3*p*p, F, H/p, W/p] -> posterior statistics [B, 2 * z_dim, f, h, w]."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * cfg.patch_size**2, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*(
            DownStage(a, b, cfg.num_res_blocks, i < last and cfg.temporal_downsample[i], i < last)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
        ))
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return _run((self.conv1, *self.downsamples, *self.middle, *self.head), x, cache)


class ResidualDecoder3d(nn.Module):
    """Latent [B, z_dim, f, h, w] -> patchified video [B, 3*p*p, F, H/p, W/p] (unclamped)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        base = cfg.decoder_base_dim or cfg.base_dim
        dims = [base * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        self.upsamples = nn.Sequential(*(
            UpStage(a, b, cfg.num_res_blocks + 1, i < last and temporal_upsample[i], i < last)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
        ))
        self.head = _head(dims[-1], 3 * cfg.patch_size**2)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return _run((self.conv1, *self.middle, *self.upsamples, *self.head), x, cache)
