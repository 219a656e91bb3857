"""Synthetic training data: procedurally rendered clips -> latents, captions -> cached text states."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.interfaces import TextEncoder, VideoAutoencoder
from ..models.space_to_depth import SpaceToDepthConfig


def clips_to_video(clips: np.ndarray) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float video [B, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


class CachedTextEncoder:
    """Memoises text states per caption (least recently used first out): the caption grammar is finite, so most
    batches are cache hits, and the bound keeps a long run's memory flat."""

    def __init__(self, encoder: TextEncoder, max_len: int, max_entries: int = 20000) -> None:
        self.encoder = encoder
        self.max_len = max_len
        self.max_entries = max_entries
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def encode(self, captions: list[str]) -> torch.Tensor:
        todo = sorted({c for c in captions if c not in self.cache})
        if todo:
            states = self.encoder.encode(todo)
            for c, s in zip(todo, states):
                self.cache[c] = s[: self.max_len].clone()
        for c in captions:
            self.cache.move_to_end(c)
        rows = [self.cache[c] for c in captions]
        while len(self.cache) > self.max_entries:
            self.cache.popitem(last=False)
        out = torch.zeros(len(rows), self.max_len, rows[0].shape[-1])
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
        return out


@dataclass
class SyntheticVideoData:
    """An endless, seeded stream of (latents, text states, captions) batches from the procedural world."""

    autoencoder: VideoAutoencoder
    text: CachedTextEncoder
    size: int = 64
    frames: int = 17
    hard_weights: object | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    focus: tuple = ()  # PromptAttributes that focus_fraction of the clips render (hard-example mining)
    focus_fraction: float = 0.0

    def clips(self, n: int) -> tuple[np.ndarray, list[str]]:
        """n rendered clips (uint8 [n, F, H, W, 3]) and their captions."""
        from ..world.captions import make_training_batch

        return make_training_batch(self.rng, n, size=self.size, frames=self.frames, hard_weights=self.hard_weights,
                                   focus=self.focus, focus_fraction=self.focus_fraction)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        clips, captions = self.clips(n)
        latents = self.autoencoder.encode(clips_to_video(clips))
        return latents, self.text.encode(captions), captions

    def batch_with_object_mask(self, n: int, spatial_stride: int,
                               temporal_stride: int) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """batch(n) plus object_mask(clips) on the latent grid [n, 1, latent frames, h, w]."""
        clips, captions = self.clips(n)
        latents = self.autoencoder.encode(clips_to_video(clips))
        return latents, self.text.encode(captions), captions, object_mask(clips, spatial_stride, temporal_stride)


OBJECT_MIN_DISTANCE = 60.0  # RGB units from the frame's median colour: SynthBench's foreground threshold


def object_mask(clips: np.ndarray, spatial_stride: int, temporal_stride: int) -> torch.Tensor:
    """1.0 on latent positions whose pixel block holds any object pixel, else 0.0: [B, 1, latent frames, h, w].

    Frame 0 has a latent frame of its own, later frames are packed temporal_stride at a time (the space-to-depth
    and Wan layout), so the mask is a max over each latent position's pixels."""
    pixels = clips.astype(np.float32)
    background = np.median(pixels.reshape(*pixels.shape[:2], -1, 3), axis=2)
    far = np.linalg.norm(pixels - background[:, :, None, None, :], axis=-1) > OBJECT_MIN_DISTANCE
    mask = torch.from_numpy(far).float()[:, None]  # [B, 1, F, H, W]
    mask = torch.cat([mask[:, :, :1].expand(-1, -1, temporal_stride, -1, -1), mask[:, :, 1:]], dim=2)
    kernel = (temporal_stride, spatial_stride, spatial_stride)
    return torch.nn.functional.max_pool3d(mask, kernel, stride=kernel)


def video_statistics(rng: np.random.Generator, n: int, size: int, frames: int) -> tuple[float, float]:
    """Mean and std of pixel values over n rendered clips: the space-to-depth latent is a permutation of the
    pixels, so these normalise its latents to zero mean and unit variance."""
    from ..world.captions import make_training_batch

    clips, _ = make_training_batch(rng, n, size=size, frames=frames, hard_weights=None)
    video = clips_to_video(clips)
    return float(video.mean()), float(video.std())


def latent_channel_statistics(rng: np.random.Generator, n: int, size: int, frames: int,
                              config: SpaceToDepthConfig, std_floor: float = 0.02) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the un-normalised latents of n rendered clips (for the Haar block latent, whose
    detail channels have a small fraction of the average's energy); std at least std_floor, so a channel that is
    nearly constant on renders is not blown up without bound."""
    from dataclasses import replace

    from ..models.space_to_depth import SpaceToDepthAutoencoder
    from ..world.captions import make_training_batch

    clips, _ = make_training_batch(rng, n, size=size, frames=frames, hard_weights=None)
    latents = SpaceToDepthAutoencoder(replace(config, mean=0.0, std=1.0)).encode(clips_to_video(clips))
    dims = (0, 2, 3, 4)
    return latents.mean(dim=dims).tolist(), latents.std(dim=dims).clamp_min(std_floor).tolist()
