"""Training clips for a finetune: frames with a caption, from video files (captions in same-name .txt files), a
folder of videos, or an image batch (ComfyUI's IMAGE), fitted to the model's size and frame count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AliceError


@dataclass
class TrainingClip:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    caption: str



def fit_frames(frames: np.ndarray, size: tuple[int, int], count: int, source: str) -> np.ndarray:
    """Centre-crop to the model's aspect ratio, resize, and keep the first `count` frames."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise AliceError(f"{source}: expected frames [F, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.shape[0] < count:
        raise AliceError(f"{source} has {frames.shape[0]} frames; the model trains on {count}: use longer clips")
    width, height = size
    h, w = frames.shape[1:3]
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    out = [np.asarray(Image.fromarray(f[top:top + ch, left:left + cw]).resize((width, height), Image.BILINEAR))
           for f in frames[:count]]
    return np.stack(out)


def clips_from_images(images: np.ndarray | torch.Tensor, caption: str, frames_per_clip: int) -> list[TrainingClip]:
    """A batch of images [N, H, W, 3] (ComfyUI's IMAGE: float in [0, 1]; or uint8) cut into consecutive clips."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    count = array.shape[0] // frames_per_clip
    if count == 0:
        raise AliceError(f"the image batch has {array.shape[0]} frames; a clip needs {frames_per_clip}")
    return [TrainingClip(array[i * frames_per_clip:(i + 1) * frames_per_clip], caption) for i in range(count)]


def clips_from_files(paths: Sequence[str | Path], caption: str | None = None) -> list[TrainingClip]:
    """Video files with their captions: `caption` for all, or else a .txt file next to each video."""
    from ..video_io import read_video

    clips = []
    for path in map(Path, paths):
        text = caption
        if text is None:
            sidecar = path.with_suffix(".txt")
            if not sidecar.exists():
                raise AliceError(f"{path}: no caption; write it to {sidecar} or pass one caption for all clips")
            text = sidecar.read_text().strip()
        frames, _ = read_video(path)
        clips.append(TrainingClip(frames, text))
    return clips


def clips_from_folder(folder: str | Path, caption: str | None = None) -> list[TrainingClip]:
    """Every video (.mp4, .webm, .gif, .mov, .mkv) in a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AliceError(f"clip folder {folder} does not exist")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".mp4", ".webm", ".gif", ".mov", ".mkv"})
    if not videos:
        raise AliceError(f"{folder} holds no videos (.mp4, .webm, .gif, .mov, .mkv)")
    return clips_from_files(videos, caption)
