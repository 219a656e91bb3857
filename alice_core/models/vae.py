"""The Wan video VAEs: causal 3D convolutions; Wan2.1 (16 latent channels, stride 4x8x8, time x height x width)
and, with the residual stages of `vae22.py`, Wan2.2 (48 channels, 2x2 pixel patchify, stride 4x16x16).

Module and parameter names follow the official Wan code (`wan/modules/vae.py`, `vae2_2.py`), so `Wan2.1_VAE.pth`,
`Wan2.2_VAE.pth` and ComfyUI's copies load as they are; `alice_core/loading/vae_keys.py` converts diffusers'.

Time is processed in chunks, as the official code does: the encoder sees the first frame alone and then
`temporal_stride` frames at a time, the decoder one latent frame at a time. Every temporal convolution keeps
the last CACHE_T frames of its input in a cache, so the chunks see the same history as one pass over the whole
clip would, while activations only ever exist for one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AliceError
from .config import WanVAEConfig

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
        time_pad = self.time_pad
        if cache is not None and time_pad > 0:
            prev = cache.get(self)
            if prev is not None:
                # the previous chunk's frames replace that much of the zero padding
                x = torch.cat([prev, x], dim=2)
                time_pad -= prev.shape[2]
            # clone: a view would keep the whole chunk alive until the next one
            cache[self] = x[:, :, -CACHE_T:].clone()
        # Rebinding frees the concatenated copy before the convolution runs (a lower encode/decode peak).
        x = F.pad(x, (*self.space_pad, time_pad, 0))
        return super().forward(x)


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


def _run(layers: nn.Module, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Apply a sequence of layers, handing the cache to those that keep temporal state."""
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


class Encoder3d(nn.Module):
    """Video [B, 3, F, H, W] -> posterior statistics [B, 2 * z_dim, f, h, w] (mean, then log-variance)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = _run(self.downsamples, x, cache)
        x = _run(self.middle, x, cache)
        return _run(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latent [B, z_dim, f, h, w] -> video [B, 3, F, H, W] (unclamped)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous stage's up-sampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = _run(self.middle, x, cache)
        x = _run(self.upsamples, x, cache)
        return _run(self.head, x, cache)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: a step of tile - overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    return [*range(0, size - tile, tile - overlap), size - tile]


def _blend_ramp(size: int, ramp: int, fade_in: bool, fade_out: bool, device: torch.device) -> torch.Tensor:
    """Per-pixel weight along one axis of a tile: a linear ramp over `ramp` pixels at edges shared with a
    neighbour, 1 elsewhere. Two overlapping ramps sum to 1, so the tiles cross-fade."""
    pos = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    weight = torch.ones_like(pos)
    if fade_in and ramp > 0:
        weight = torch.minimum(weight, pos / ramp)
    if fade_out and ramp > 0:
        weight = torch.minimum(weight, (size - pos) / ramp)
    return weight


class WanVAE(nn.Module):
    """Wan2.1 / Wan2.2 VAE implementing the `VideoAutoencoder` protocol (normalised latents in, [-1, 1] video out)."""

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        cfg = config or WanVAEConfig()
        if len(cfg.temporal_downsample) != len(cfg.dim_mult) - 1:
            raise AliceError(
                f"VAE config: temporal_downsample needs {len(cfg.dim_mult) - 1} values (one per down-sampling "
                f"stage, len(dim_mult) - 1), got {len(cfg.temporal_downsample)}"
            )
        self.config = cfg
        self.latent_channels = cfg.z_dim
        self.temporal_stride = cfg.temporal_stride
        self.spatial_stride = cfg.spatial_stride
        if cfg.residual:
            from .vae22 import ResidualDecoder3d, ResidualEncoder3d  # vae22 builds on this module's layers

            self.encoder, self.decoder = ResidualEncoder3d(cfg), ResidualDecoder3d(cfg)
        else:
            self.encoder, self.decoder = Encoder3d(cfg), Decoder3d(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # posterior (mean, log-variance)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)  # latent -> decoder input

    @classmethod
    def from_config(cls, config: WanVAEConfig) -> "WanVAE":
        return cls(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # built from the config rather than stored as buffers, so state dicts hold exactly the checkpoint keys
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise AliceError(f"VAE encode expects video [B, 3, F, H, W] in [-1, 1], got shape {tuple(video.shape)}")
        frames, height, width = video.shape[2:]
        ts, ss = self.temporal_stride, self.spatial_stride
        if (frames - 1) % ts:
            lower = 1 + (frames - 1) // ts * ts
            raise AliceError(
                f"VAE encode: {frames} frames; the frame count must be 1 + {ts}k (1, {1 + ts}, {1 + 2 * ts}, ...): "
                f"use {lower} or {lower + ts} frames"
            )
        if height % ss or width % ss:
            raise AliceError(
                f"VAE encode: height x width {height}x{width} must both be multiples of {ss}; "
                f"use e.g. {height // ss * ss}x{width // ss * ss}"
            )

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] -> normalised latent (mu - mean) / std [B, z_dim, 1 + (F-1)//4, H/s, W/s]
        (s = 8 for Wan2.1, 16 for Wan2.2). Deterministic: the posterior mean, no sampling."""
        self._check_video(video)
        x = video.to(self.conv2.weight)  # the weights' device and dtype
        if self.config.patch_size > 1:
            from .vae22 import patchify

            x = patchify(x, self.config.patch_size)
        ts = self.temporal_stride
        chunks = [x[:, :, :1]] + [x[:, :, i : i + ts] for i in range(1, x.shape[2], ts)]
        cache: Cache = {}
        stats = self.conv1(torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2))
        mu = stats[:, : self.latent_channels]  # the log-variance half is unused: encoding is deterministic
        mean, std = self._latent_stats(mu)
        return (mu - mean) / std

    def decode(
        self, latent: torch.Tensor, tiled: bool = False, tile_latent: int = 32, overlap_latent: int = 8
    ) -> torch.Tensor:
        """Normalised latent [B, z_dim, f, h, w] -> video [B, 3, 1 + 4(f-1), s*h, s*w] clamped to [-1, 1].

        tiled=True decodes overlapping spatial tiles of `tile_latent` latent pixels (sharing `overlap_latent`)
        one at a time and cross-fades them: much less memory, close to but not exactly the untiled result."""
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            hint = ""
            if latent.ndim == 5 and {latent.shape[1], self.latent_channels} == {16, 48}:
                other = "Wan2.2 VAE (z_dim 48)" if latent.shape[1] == 48 else "Wan2.1 VAE (z_dim 16)"
                hint = f"; these latents are for the {other}: load that VAE"
            raise AliceError(
                f"VAE decode expects latents [B, {self.latent_channels}, f, h, w], got shape {tuple(latent.shape)}{hint}"
            )
        z = latent.to(self.conv2.weight)
        mean, std = self._latent_stats(z)
        z = z * std + mean
        if tiled:
            if tile_latent < 1 or not 0 <= overlap_latent < tile_latent:
                raise AliceError(
                    f"VAE tiled decode: need tile_latent >= 1 and 0 <= overlap_latent < tile_latent, "
                    f"got tile_latent={tile_latent}, overlap_latent={overlap_latent}"
                )
            video = self._decode_tiled(z, tile_latent, overlap_latent)
        else:
            video = self._decode(z)
        return video.clamp(-1.0, 1.0)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv2(z)
        cache: Cache = {}
        video = torch.cat([self.decoder(x[:, :, i : i + 1], cache) for i in range(x.shape[2])], dim=2)
        if self.config.patch_size > 1:
            from .vae22 import unpatchify

            video = unpatchify(video, self.config.patch_size)
        return video

    def _decode_tiled(self, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        # Not exact: the convolutions near a tile's border, and the per-frame attention everywhere, miss what lies
        # beyond the tile; the linear cross-fade over the overlap hides the seams.
        b, _, f, h, w = z.shape
        s, th, tw = self.spatial_stride, min(tile, h), min(tile, w)
        # blended in float32: half-precision weights and sums would band the cross-fade
        out = z.new_zeros(b, 3, 1 + (f - 1) * self.temporal_stride, h * s, w * s, dtype=torch.float32)
        weight = z.new_zeros(h * s, w * s, dtype=torch.float32)
        for y in _tile_starts(h, tile, overlap):
            for x in _tile_starts(w, tile, overlap):
                part = self._decode(z[:, :, :, y : y + th, x : x + tw])
                wy = _blend_ramp(th * s, overlap * s, y > 0, y + th < h, z.device)
                wx = _blend_ramp(tw * s, overlap * s, x > 0, x + tw < w, z.device)
                mask = wy[:, None] * wx[None, :]
                out[..., y * s : (y + th) * s, x * s : (x + tw) * s] += part * mask
                weight[y * s : (y + th) * s, x * s : (x + tw) * s] += mask
        return (out / weight).to(z.dtype)
