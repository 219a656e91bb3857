"""Frame quality a person would agree with: how clean the background is and how many pieces the object is in.

- background RMS: root mean square (over pixels and RGB channels, 0-255 scale) of the background pixels'
  distance from the clip's background colour (the per-channel median of all its pixels; the object covers a few
  per cent of them). Background pixels are everything not within one pixel of a foreground fragment, so the
  anti-aliased edge of a rendered shape does not count as noise: a render scores exactly 0.
- fragments per frame: 8-connected foreground blobs (pixels at least FOREGROUND_MIN_DISTANCE from the background
  colour) of at least MIN_FRAGMENT_SHARE of the frame, averaged over frames. A render of one object scores 1.0;
  an object broken into 4x4-pixel pieces or doubled scores more, a missing object less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detector import FOREGROUND_MIN_DISTANCE, _label_components, check_clip_array

# Smallest blob counted as a fragment, as a share of the frame: 2 px at 32x32, 8 px at 64x64 (a rendered object
# covers >= 0.004). Smaller specks are background noise and show in the RMS instead.
MIN_FRAGMENT_SHARE = 0.002


@dataclass(frozen=True)
class FrameQuality:
    background_rms: float  # 0-255 scale; 0 for a render
    fragments_per_frame: float  # 1.0 for a render of one object


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation of each frame of mask [F, H, W]."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def frame_quality(clip: np.ndarray) -> FrameQuality:
    """Background RMS and fragments per frame of a uint8 clip [F, H, W, 3]."""
    check_clip_array(clip)
    frames, size = clip.shape[0], clip.shape[1]
    pixels = clip.astype(np.float32)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    offset = pixels - background
    foreground = np.linalg.norm(offset, axis=-1) > FOREGROUND_MIN_DISTANCE
    labels = _label_components(foreground)
    roots, areas = np.unique(labels[labels >= 0], return_counts=True)
    fragment_roots = roots[areas >= max(1.0, MIN_FRAGMENT_SHARE * size * size)]
    counts = np.bincount(fragment_roots // (size * size), minlength=frames)
    in_fragment = np.isin(labels, fragment_roots)
    background_pixels = ~_dilate(in_fragment)
    rest = offset[background_pixels]
    rms = float(np.sqrt(np.mean(rest**2))) if rest.size else 0.0
    return FrameQuality(rms, float(counts.mean()))


def mean_frame_quality(qualities: list[FrameQuality]) -> FrameQuality:
    """Average of several clips' measures (both are per-clip means already)."""
    return FrameQuality(float(np.mean([q.background_rms for q in qualities])),
                        float(np.mean([q.fragments_per_frame for q in qualities])))
