"""What flows between the generation stages: the settings, encoded prompts, the result, and the two stage
functions that need no pipeline (prompt encoding, latent decoding). The front door that uses them: pipeline.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__
from .errors import AliceError
from .models.dit import WanDiT
from .models.interfaces import TextEncoder, VideoAutoencoder
from .models.vae import WanVAE
from .sampling import Experts



@dataclass
class GenerationSettings:
    """What to generate. None means "the model's default"."""

    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | None = None
    sigma_max: float | None = None
    ode: bool = False
    guidance: float | None = None
    shift: float | None = None
    boundary: float | None = None  # two-expert models: RF time where the low-noise expert takes over
    guidance_low: float | None = None  # two-expert models: the low-noise expert's guidance (None: as `guidance`)
    image: str | None = None  # image-to-video: the start image's name (the picture itself goes to the call)


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts [1, L, dim] on the CPU; `negative` (for the teacher's guidance) is None when not encoded."""

    prompt: str
    negative_prompt: str
    positive: torch.Tensor
    negative: torch.Tensor | None


@dataclass
class GeneratedVideo:
    frames: np.ndarray | None          # uint8 [F, H, W, 3]; None for output_type="latent"
    settings: GenerationSettings       # fully resolved
    model_name: str
    timings: dict[str, float] = field(default_factory=dict)
    loras: tuple[tuple[str, float], ...] = ()  # (file name, strength) applied to the model, in order
    latents: torch.Tensor | None = None        # the normalised latents the frames were decoded from
    experts: list[str] = field(default_factory=list)  # two-expert models: "high" / "low" per step

    def metadata(self) -> dict[str, str | int | float]:
        meta = {k: v for k, v in dataclasses.asdict(self.settings).items() if v is not None}
        meta.update(model=self.model_name, software=f"alice {__version__}")
        if self.experts:
            meta["experts"] = ",".join(self.experts)
        if self.loras:
            meta.update(lora=", ".join(name for name, _ in self.loras))
            strengths = [strength for _, strength in self.loras]
            meta.update(lora_strength=strengths[0] if len(strengths) == 1 else ", ".join(f"{s:g}" for s in strengths))
        return meta


def encode_prompts(encoder: TextEncoder, prompt: str, negative_prompt: str | None = "") -> Conditioning:
    """Both prompts in one batch (the negative only when given: only the teacher's guidance uses it)."""
    if not prompt or not prompt.strip():
        raise AliceError("the prompt is empty; describe the video, e.g. \"a red ball bouncing\"")
    prompts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
    with torch.inference_mode():
        states = encoder.encode(prompts).float().cpu()
    return Conditioning(prompt, negative_prompt or "", states[:1], states[1:] if negative_prompt is not None else None)


def decode_latents(autoencoder: VideoAutoencoder, latents: torch.Tensor, tiled: bool = False, tile_size: int = 256,
                   overlap: int = 64) -> torch.Tensor:
    """Normalised latents [B, C, F, H, W] -> video [B, 3, F, H, W] in [-1, 1]. Tiling (sizes in pixels) applies to
    autoencoders that take it (the Wan VAE); the space-to-depth latent is a reshape that needs none."""
    if tiled and not 0 <= overlap < tile_size:
        raise AliceError(f"tiled decoding needs 0 <= overlap < tile_size, got overlap {overlap}, tile_size {tile_size}")
    with torch.inference_mode():
        if tiled and isinstance(autoencoder, WanVAE):
            stride = autoencoder.spatial_stride
            video = autoencoder.decode(latents, tiled=True, tile_latent=max(1, tile_size // stride),
                                       overlap_latent=overlap // stride)
        else:
            video = autoencoder.decode(latents)
    return video.float().clamp(-1, 1)


def frames_from_video(video: torch.Tensor) -> np.ndarray:
    """Decoded video [B, 3, F, H, W] in [-1, 1] -> uint8 frames [B, F, H, W, 3]."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


def dit_config(dit: WanDiT | Experts[WanDiT]):
    """The architecture of a DiT or of an expert pair (both experts share it)."""
    return (dit.high if isinstance(dit, Experts) else dit).config
