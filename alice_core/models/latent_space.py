"""What a latent tensor means: its channels, strides, and the normalisation between raw autoencoder latents and the
normalised latents the DiT denoises (what `VideoAutoencoder` encodes to and decodes from)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AliceError
from .config import WAN22_VAE, WanVAEConfig
from .interfaces import VideoAutoencoder
from .space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig
from .vae import WanVAE


@dataclass(frozen=True)
class LatentSpace:
    """Has the `latent_channels` / `temporal_stride` / `spatial_stride` of `VideoAutoencoder`: all that sampling
    needs to check sizes and shape noise, so a model can sample without its VAE loaded."""

    name: str
    latent_channels: int
    temporal_stride: int
    spatial_stride: int
    mean: tuple[float, ...]  # one value for all channels, or one per channel
    std: tuple[float, ...]

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=like.device).view(shape)
        return mean, std

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return latents.float() * std + mean

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(raw)
        return (raw.float() - mean) / std


def _wan_vae_space(c: WanVAEConfig) -> LatentSpace:
    name = "Wan2.2 VAE" if c.z_dim == WAN22_VAE.z_dim else "Wan2.1 VAE"
    return LatentSpace(name, c.z_dim, c.temporal_stride, c.spatial_stride, c.latents_mean, c.latents_std)


def wan_latent_space(channels: int = 16) -> LatentSpace:
    """The latent space of the Wan VAE with `channels` latent channels, without loading it: the Wan2.2 VAE's for 48
    (TI2V-5B), else the Wan2.1 VAE's (Wan2.1 and the Wan2.2 A14B models)."""
    return _wan_vae_space(WAN22_VAE if channels == WAN22_VAE.z_dim else WanVAEConfig())


def latent_space_of(autoencoder: VideoAutoencoder) -> LatentSpace:
    if isinstance(autoencoder, SpaceToDepthAutoencoder):
        c = autoencoder.config
        return LatentSpace(
            f"space-to-depth {c.temporal_stride}x{c.spatial_stride}x{c.spatial_stride}"
            + ("" if c.block_transform == "none" else f" {c.block_transform}"), autoencoder.latent_channels,
            c.temporal_stride, c.spatial_stride, (c.mean,), (c.std,),
        )
    if isinstance(autoencoder, WanVAE):
        return _wan_vae_space(autoencoder.config)
    raise AliceError(f"unsupported autoencoder {type(autoencoder).__name__}; use the space-to-depth latent or a Wan VAE")


def latent_space_for(spec: dict) -> LatentSpace:
    """The latent space of a bundle's autoencoder spec (model.json), without loading any weights."""
    if spec.get("type") == "space_to_depth":  # weight-free: building it costs nothing
        return latent_space_of(SpaceToDepthAutoencoder(SpaceToDepthConfig(**{k: v for k, v in spec.items() if k != "type"})))
    if spec.get("type") == "wan_vae":
        return wan_latent_space()
    raise AliceError(f"model.json: autoencoder.type must be 'space_to_depth' or 'wan_vae', got {spec.get('type')!r}")
