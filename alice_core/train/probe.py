"""Measuring while training: SynthBench on a fixed set of held-out prompts, scored with the EMA weights every
few hundred steps and logged beside the loss (metrics.csv in the run folder), so a recipe that does not learn
motion shows it in the first hour instead of after the budget is spent.

The sampler is the teacher's (Euler flow matching with CFG) at a reduced step count: all prompts go through the
network as one batch, so an evaluation costs about 2 x eval_steps forward passes of the training batch size.
The noise is the same at every evaluation, so successive rows differ only by the weights.

Beside the sampled clips, the x0 error at fixed noise levels on a fixed set of rendered validation clips: the
pixel RMS (0-255) of the clip the network predicts from x_s = (1-s) x0 + s noise, in one step. It is measured in
pixels, so runs over different latents (or loss weightings) compare, and at s near 1 it shows whether the network
learns what it must commit to from pure noise long before sampled clips show motion.

And whether the prompt's direction is used at all: `text_motion_px`, the displacement (pixels over the clip, along
the rendered direction) of the object in the one-step x0 prediction from a noised straight-moving clip at s = 0.95,
prompted with its own direction minus prompted with the opposite one. A network that reads motion only from the
noisy clip scores 0 however well it denoises; one that follows the prompt approaches the rendered travel.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from ..models.interfaces import VideoAutoencoder
from ..sampling import sample_flow_matching
from ..world import run_synthbench, synthbench_prompts

METRICS_COLUMNS: tuple[str, ...] = (
    "step", "train_seconds", "loss", "colour", "shape", "direction", "wrong_label_motion", "bounce", "persistence",
    "background_rms", "fragments", "x0_rmse_mid", "x0_rmse_high", "text_motion_px", "eval_seconds",
)
MID_LEVELS: tuple[float, ...] = (0.5,)
HIGH_LEVELS: tuple[float, ...] = (0.85, 0.95, 1.0)
TEXT_MOTION_LEVEL = 0.95
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def probe_prompts(count: int = 20) -> list[str]:
    """`count` held-out prompts spread evenly over SynthBench's (every 3rd of 60, every 4.5th of 90: each colour
    and each motion)."""
    prompts = synthbench_prompts("heldout")
    count = min(count, len(prompts))
    return [prompts[(i * len(prompts)) // count] for i in range(count)]


@dataclass(frozen=True)
class ProbeSettings:
    prompts: int = 20
    steps: int = 16
    guidance: float = 3.0
    shift: float = 3.0
    seed: int = 0
    validation_clips: int = 16


class TrainingProbe:
    """Samples the probe prompts with given DiT weights and scores them (SynthBench attributes + frame quality)."""

    def __init__(self, settings: ProbeSettings, dit_config: WanDiTConfig, autoencoder: VideoAutoencoder,
                 contexts: torch.Tensor, null_context: torch.Tensor, prompts: list[str],
                 latent_shape: tuple[int, int, int, int], device: torch.device,
                 validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 motion_validation: MotionValidation | None = None) -> None:
        """validation: (uint8 clips [N, F, H, W, 3], their latents, their text states) for the x0 error;
        motion_validation: straight-moving clips with their own and opposite prompts, for text_motion_px."""
        self.settings = settings
        self.autoencoder = autoencoder
        self.prompts = prompts
        self.device = device
        self.model = WanDiT(dit_config).to(device).eval()
        self.contexts = contexts.to(device)
        self.null = null_context.expand_as(contexts).to(device)
        self.shape = (len(prompts), *latent_shape)
        self.validation = validation
        self.motion_validation = motion_validation

    @torch.inference_mode()
    def measure(self, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        from ..pipeline import frames_from_video

        self.model.load_state_dict(weights)
        s = self.settings
        cond = lambda x, t: self.model(x, t, self.contexts)  # noqa: E731
        uncond = lambda x, t: self.model(x, t, self.null)  # noqa: E731
        latents = sample_flow_matching(cond, uncond, self.shape, torch.Generator().manual_seed(s.seed), s.steps,
                                       s.guidance, s.shift, self.device)
        clips = dict(zip(self.prompts, frames_from_video(self.autoencoder.decode(latents.cpu()))))
        result = run_synthbench(lambda prompt, seed: clips[prompt], self.prompts, [s.seed])
        metrics = {a: result.accuracy(a)[0] for a in ("colour", "shape", "direction", "wrong_label_motion",
                                                      "bounce", "persistence")}
        quality = result.frame_quality()
        metrics.update(background_rms=quality.background_rms, fragments=quality.fragments_per_frame)
        metrics.update(x0_rmse_mid=self._x0_rmse(MID_LEVELS), x0_rmse_high=self._x0_rmse(HIGH_LEVELS))
        metrics.update(text_motion_px=self._text_motion_px())
        return metrics

    def _x0_from(self, latents: torch.Tensor, level: float, contexts: torch.Tensor) -> torch.Tensor:
        """Decoded one-step x0 prediction (video in [-1, 1]) from `latents` noised to `level` with fixed noise."""
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(self.settings.seed + 1))
        x = ((1 - level) * latents + level * noise).to(self.device)
        t = torch.full((len(latents),), level * 1000.0, device=self.device)
        x0 = x - level * self.model(x, t, contexts.to(self.device)).float()
        return self.autoencoder.decode(x0.cpu()).float().clamp(-1, 1)

    def _text_motion_px(self) -> float:
        mv = self.motion_validation
        if mv is None:
            return float("nan")
        own = object_travel(self._x0_from(mv.latents, TEXT_MOTION_LEVEL, mv.own), mv.background, mv.axes)
        opposite = object_travel(self._x0_from(mv.latents, TEXT_MOTION_LEVEL, mv.opposite), mv.background, mv.axes)
        return float((own - opposite).mean())

    def _x0_rmse(self, levels: tuple[float, ...]) -> float:
        """Pixel RMS (0-255) of the one-step x0 prediction from the validation clips noised to each level."""
        if self.validation is None:
            return float("nan")
        clips, latents, contexts = self.validation
        squared = []
        for level in levels:
            pixels = (self._x0_from(latents, level, contexts) + 1) * 127.5
            truth = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float()
            squared.append((pixels - truth).pow(2).mean().item())
        return float(sum(squared) / len(squared)) ** 0.5


@dataclass(frozen=True)
class MotionValidation:
    """Straight-moving rendered clips for text_motion_px: latents, the text states of a prompt naming each clip's
    direction and of one naming the opposite, background colours ([N, 3] in [-1, 1]) and signed unit axes [N, 2]
    (x right, y down) of the rendered directions."""

    latents: torch.Tensor
    own: torch.Tensor
    opposite: torch.Tensor
    background: torch.Tensor
    axes: torch.Tensor


def object_travel(video: torch.Tensor, background: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Per clip, the last-minus-first-frame displacement (pixels) along `axes` of the centroid of the pixels'
    distance from the background colour: a soft centroid, so a faint or blurred prediction still has a position."""
    weight = (video - background.view(-1, 3, 1, 1, 1)).pow(2).sum(dim=1).sqrt()  # [N, F, H, W]
    height, width = weight.shape[-2:]
    ys = torch.arange(height, dtype=weight.dtype).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=weight.dtype).view(1, 1, 1, width)
    mass = weight.sum(dim=(2, 3)).clamp_min(1e-6)
    cx, cy = (weight * xs).sum(dim=(2, 3)) / mass, (weight * ys).sum(dim=(2, 3)) / mass
    return (cx[:, -1] - cx[:, 0]) * axes[:, 0] + (cy[:, -1] - cy[:, 0]) * axes[:, 1]


class MetricsLog:
    """metrics.csv of a run: one row per evaluation; rows after the step a run resumes from are dropped."""

    def __init__(self, path: str | Path, resumed_step: int) -> None:
        self.path = Path(path)
        rows = []
        if self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resumed_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.logged_steps = {int(r["step"]) for r in rows}

    def evaluate(self, probe: TrainingProbe, weights: dict[str, torch.Tensor], step: int, train_seconds: float,
                 loss: float) -> dict[str, float]:
        start = time.monotonic()
        metrics = probe.measure(weights)
        row = {"step": step, "train_seconds": f"{train_seconds:.1f}", "loss": f"{loss:.5f}",
               **{k: f"{v:.4f}" for k, v in metrics.items()}, "eval_seconds": f"{time.monotonic() - start:.1f}"}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRICS_COLUMNS).writerow(row)
        self.logged_steps.add(step)
        return metrics
