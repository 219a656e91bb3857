"""Hard-example mining for distillation: score the student on held-out probe prompts every few hundred iterations
and render more training clips with the attributes of the prompts it gets wrong (the rCM seed's second mechanism).

The probe prompts are SynthBench held-out strings; training sees their attribute combinations only under other
wordings (make_training_batch never emits a held-out string), so mining steers what is drawn, not what is read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from ..models.interfaces import VideoAutoencoder
from ..sampling import sample_rcm
from ..world.captions import PromptAttributes, parse_prompt
from ..world.synthbench import run_synthbench
from .data import CachedTextEncoder
from .probe import probe_prompts

MINING_COLUMNS = ("iteration", "failed", "prompts", "colour", "shape", "direction", "bounce", "persistence", "all")


class HardExampleMiner:
    """Samples the probe prompts with the student's weights (rCM, `steps` steps) and returns the attributes of the
    prompts that fail any check, logging the scores to `log_path` (CSV)."""

    def __init__(self, dit_config: WanDiTConfig, autoencoder: VideoAutoencoder, text: CachedTextEncoder,
                 latent_shape: tuple[int, ...], device: torch.device, log_path: Path | None, prompts: int = 20,
                 steps: int = 4, sigma_max: float = 80.0, seed: int = 0) -> None:
        self.prompts = probe_prompts(prompts)
        self.contexts = text.encode(self.prompts).to(device)
        self.autoencoder = autoencoder
        self.model = WanDiT(dit_config).to(device).eval()
        self.shape = (len(self.prompts), *latent_shape)
        self.device, self.steps, self.sigma_max, self.seed = device, steps, sigma_max, seed
        self.log_path = log_path

    @torch.inference_mode()
    def mine(self, weights: dict[str, torch.Tensor], iteration: int) -> tuple[PromptAttributes, ...]:
        from ..pipeline import frames_from_video

        self.model.load_state_dict(weights)
        velocity = lambda x, t: self.model(x, t, self.contexts)  # noqa: E731
        latents = sample_rcm(velocity, self.shape, torch.Generator().manual_seed(self.seed), self.steps,
                             self.sigma_max, device=self.device)
        clips = dict(zip(self.prompts, frames_from_video(self.autoencoder.decode(latents.float().cpu()))))
        result = run_synthbench(lambda prompt, seed: clips[prompt], self.prompts, [self.seed])
        failed = tuple(parse_prompt(p) for p, score in zip(self.prompts, result.scores[0]) if not score.all)
        if self.log_path is not None:
            self._log(iteration, len(failed), result)
        return failed

    def _log(self, iteration: int, failed: int, result) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(MINING_COLUMNS)
            scores = [f"{result.accuracy(a)[0]:.4f}" for a in MINING_COLUMNS[3:]]
            writer.writerow([iteration, failed, len(self.prompts), *scores])
