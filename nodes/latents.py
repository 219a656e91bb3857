"""ComfyUI's LATENT and IMAGE formats, converted to and from what the library passes between its stages.

A LATENT dict holds *raw* (un-normalised) autoencoder latents, because that is what ComfyUI's own VAE nodes and
latent formats expect: with the Wan2.1 VAE, ComfyUI's VAEDecode decodes an Alice LATENT directly. Inside Alice
latents are *normalised* (what the DiT sees). An IMAGE is a float batch [frames, height, width, 3] in 0..1.
"""

from __future__ import annotations

import torch

from alice_core.errors import AliceError
from alice_core.models.latent_space import LatentSpace

# A Wan latent decoded with the other Wan VAE: the one it is for (TI2V-5B's latents are the Wan2.2 VAE's).
WAN_VAE_FOR_CHANNELS = {16: "Wan2.1 VAE (z_dim 16)", 48: "Wan2.2 VAE (z_dim 48)"}


def to_comfy_latent(latents: torch.Tensor, space: LatentSpace) -> dict[str, torch.Tensor]:
    """Normalised DiT latents [B, C, F, H, W] -> a ComfyUI LATENT dict holding raw latents on the CPU."""
    return {"samples": space.to_raw(latents).cpu()}


def from_comfy_latent(latent: dict, space: LatentSpace) -> torch.Tensor:
    """A ComfyUI LATENT dict -> normalised latents for `space`, with an error naming the mismatch."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise AliceError(f"a video LATENT must hold 'samples' [B, C, F, H, W], got {shape}")
    if samples.shape[1] != space.latent_channels:
        fix = WAN_VAE_FOR_CHANNELS.get(samples.shape[1]) if space.name.startswith("Wan") else None
        raise AliceError(
            f"the latent has {samples.shape[1]} channels but the {space.name} takes {space.latent_channels}; "
            + (f"choose the {fix} in Alice VAE Loader" if fix else
               "decode with the VAE that matches the model (alice-tiny: the 'alice-tiny' VAE entry)")
        )
    return space.from_raw(samples)


def to_comfy_image(video: torch.Tensor) -> torch.Tensor:
    """Decoded video [B, 3, F, H, W] in [-1, 1] -> IMAGE [B*F, H, W, 3] float32 in 0..1 on the CPU."""
    frames = (video.float() + 1) / 2
    return frames.permute(0, 2, 3, 4, 1).reshape(-1, *frames.shape[3:], 3).cpu().contiguous()
