"""The layers both Wan VAEs are built from: causal 3D convolutions with a frame cache, RMS norms, residual and
attention blocks, resamplers (Wan2.1's vae.py; Wan2.2's residual stages in vae22.py build on them too)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

CACHE_T = 2  # frames of history a 3-tap causal conv needs

# Per-clip state of the chunked pass: each temporal conv -> the input frames it keeps for the next chunk.
# A conv present with the value None has run once but holds no frames (the first-chunk marker of `Resample`).
Cache = dict[nn.Module, "torch.Tensor | None"]


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the past side of time, so output frame t depends on input frames <= t."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_dim, out_dim, kernel_size, stride=stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_pad = 2 * pt  # all of it in front: no look-ahead
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        padded = F.pad(x, (*self.space_pad, self.time_pad, 0))
        if cache is not None and self.time_pad > 0:
            prev = cache.get(self)
            history = 0 if prev is None else prev.shape[2]
            pw, _, ph, _ = self.space_pad
            interior = padded[..., ph : ph + x.shape[3], pw : pw + x.shape[4]]
            if prev is not None:
                # the previous chunk's frames replace that much of the zero padding, written in place: a
                # torch.cat([prev, x]) would be one more chunk-sized copy alive beside the padded one
                interior[:, :, self.time_pad - history : self.time_pad] = prev
            # clone: a view would keep the whole padded chunk alive until the next one
            cache[self] = interior[:, :, -min(CACHE_T, history + x.shape[2]) :].clone()
        return super().forward(padded)


class RMSNorm(nn.Module):
    """Channel-wise L2 normalisation times sqrt(C) and a learned gain; computed in float32 for half inputs."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        # gamma keeps the official shapes: [C, 1, 1] for frames (attention), [C, 1, 1, 1] for video
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class Cached(nn.Module):
    """A layer whose forward takes (x, cache): it keeps temporal state across chunks."""


def _run(layers: Iterable[nn.Module], x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Apply a sequence of layers, handing the cache to those that keep temporal state.

    Each layer's input is freed as soon as the next layer has its output. A caller that keeps a reference to `x`
    keeps it alive for the whole sequence: pass an encoder's or decoder's layers as one sequence, not stage by
    stage (one full-resolution activation less at the peak)."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, (CausalConv3d, Cached)) else layer(x)
    return x


class ResidualBlock(Cached):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Identity(),  # the official dropout slot; keeps the checkpoint key `residual.6` for the next conv
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return self.shortcut(x) + _run(self.residual, x, cache)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame; frames do not attend to each other."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).unsqueeze(1)  # [bt, 1, hw, 3c]
        # Contiguous q/k/v: strided slices of qkv would send SDPA to its slow math path.
        out = F.scaled_dot_product_attention(*(t.contiguous() for t in qkv.chunk(3, dim=-1)))
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class Resample(Cached):
    """2x spatial down- or up-sampling of each frame, with 2x in time too when a `time_conv` is present.

    Wan2.1's up-sampling halves the channels (Wan2.2's keeps them: `up_dim`). In time, the first frame stays a
    single frame both ways, which is what makes F = 1 + 4k video frames <-> 1 + k latent frames.
    """

    def __init__(self, dim: int, mode: str, up_dim: int | None = None) -> None:
        super().__init__()
        self.up = mode.startswith("up")
        self.time_conv: CausalConv3d | None
        if self.up:
            # nearest-exact equals nearest for a factor of 2; at index 0 it puts the conv at the key `resample.1`
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(dim, up_dim or dim // 2, 3, padding=1)
            )
            # produces two frames per input frame, stacked along the channels
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if mode == "upsample3d" else None
        else:
            # pad right/bottom only, then a stride-2 conv (the official choice, so real weights line up)
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if mode == "downsample3d" else None

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.up and self.time_conv is not None:
            if self.time_conv in cache:
                b, c, t, h, w = x.shape
                pairs = self.time_conv(x, cache).view(b, 2, c, t, h, w)
                x = pairs.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            else:  # first latent frame: not doubled; later chunks then start from zero history
                cache[self.time_conv] = None
        b, t = x.shape[0], x.shape[2]
        x = self.resample(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, t)).transpose(1, 2)
        if not self.up and self.time_conv is not None:
            prev = cache.get(self.time_conv)
            cache[self.time_conv] = x[:, :, -1:].clone()
            if prev is not None:  # the first chunk (one frame) passes through unchanged
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))
