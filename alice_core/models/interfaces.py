"""The two interfaces the pipeline depends on, so real Wan parts and the tiny model's parts swap freely."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VideoAutoencoder(Protocol):
    """Pixels <-> normalised latents.

    encode: video [B, 3, F, H, W] in [-1, 1], F = 1 + temporal_stride * k  ->  latent [B, C, f, h, w],
            f = 1 + (F - 1) // temporal_stride, h = H // spatial_stride, w = W // spatial_stride,
            already normalised ((mu - mean) / std for the Wan VAE) so the DiT sees it directly.
    decode: the inverse map, returning video in [-1, 1].
    """

    latent_channels: int
    temporal_stride: int
    spatial_stride: int

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> token states [B, L, dim]; positions past a prompt's own length are exactly zero."""

    dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...
