"""Synthetic training data: procedurally rendered clips -> latents, captions -> cached text states."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.interfaces import TextEncoder, VideoAutoencoder


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

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        from ..world.captions import make_training_batch

        clips, captions = make_training_batch(self.rng, n, size=self.size, frames=self.frames, hard_weights=self.hard_weights)
        latents = self.autoencoder.encode(clips_to_video(clips))
        return latents, self.text.encode(captions), captions


def video_statistics(rng: np.random.Generator, n: int, size: int, frames: int) -> tuple[float, float]:
    """Mean and std of pixel values over n rendered clips: the space-to-depth latent is a permutation of the
    pixels, so these normalise its latents to zero mean and unit variance."""
    from ..world.captions import make_training_batch

    clips, _ = make_training_batch(rng, n, size=size, frames=frames, hard_weights=None)
    video = clips_to_video(clips)
    return float(video.mean()), float(video.std())
