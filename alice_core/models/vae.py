"""The Wan video VAEs: causal 3D convolutions; Wan2.1 (16 latent channels, stride 4x8x8, time x height x width)
and, with the residual stages of `vae22.py`, Wan2.2 (48 channels, 2x2 pixel patchify, stride 4x16x16).

Module and parameter names follow the official Wan code (`wan/modules/vae.py`, `vae2_2.py`), so `Wan2.1_VAE.pth`,
`Wan2.2_VAE.pth` and ComfyUI's copies load as they are; `alice_core/loading/vae.py` converts diffusers'.

Time is processed in chunks, as the official code does: the encoder sees the first frame alone and then
`temporal_stride` frames at a time, the decoder one latent frame at a time. Every temporal convolution keeps
the last CACHE_T frames of its input in a cache, so the chunks see the same history as one pass over the whole
clip would, while activations only ever exist for one chunk.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import AliceError
from .config import WanVAEConfig
from .vae22 import ResidualDecoder3d, ResidualEncoder3d, patchify, unpatchify
from .vae_layers import Cache, CausalConv3d, _run, ResidualBlock, Resample, _middle, _head

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
        return _run((self.conv1, *self.downsamples, *self.middle, *self.head), x, cache)


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
        return _run((self.conv1, *self.middle, *self.upsamples, *self.head), x, cache)


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
