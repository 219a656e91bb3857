"""At which noise level does the teacher lose a rendered clip's object and motion? (SDEdit from rendered clips)

    python benchmarks/teacher_coherence.py [--model DIR] [--clips 6] [--levels 0.5,0.7,0.85,0.95,1.0] [--threads N]

Rendered straight-motion clips are encoded, noised to each start level s0 and denoised by the teacher (Euler, the
model's shift, its caption with CFG). A row per s0: how many results keep one persistent object, how many move in
the captioned direction, and the mean distance (pixels) between their object centroids and the rendered ones.
Sampling from pure noise is s0 = 1. A teacher that keeps the clip up to a high s0 but not from 1 has learned to
follow motion it can see, not to commit to a trajectory when nothing is visible yet.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from alice_core.pipeline import load_pipeline
from alice_core.sampling import sample_flow_matching
from alice_core.train.data import clips_to_video
from alice_core.world import make_training_batch
from alice_core.world.captions import parse_prompt
from alice_core.world.detector import analyse_clip, check_direction, check_persistence


def straight_motion_clips(count: int, size: int, frames: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` rendered clips whose captions name a straight direction (bounces have no single direction)."""
    rng = np.random.default_rng(seed)
    kept_clips, kept_captions = [], []
    while len(kept_clips) < count:
        clips, captions = make_training_batch(rng, count, size=size, frames=frames)
        for clip, caption in zip(clips, captions):
            if parse_prompt(caption).motion not in (None, "bounce") and len(kept_clips) < count:
                kept_clips.append(clip)
                kept_captions.append(caption)
    return np.stack(kept_clips), kept_captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--levels", default="0.5,0.7,0.85,0.95,1.0")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    dit, d = pipe.dits["teacher"], pipe.defaults
    size, frames = d.width, d.frames
    clips, captions = straight_motion_clips(args.clips, size, frames, args.seed)
    latents = pipe.autoencoder.encode(clips_to_video(clips))
    contexts, null = pipe.text_encoder.encode(captions), pipe.text_encoder.encode([""])
    truth = [analyse_clip(c) for c in clips]

    def velocity(ctx: torch.Tensor):
        return lambda x, t: dit(x.to(dit.dtype), t, ctx.to(dit.dtype)).float()

    print("| start noise s0 | persistent | captioned direction | centroid error (px) |\n|---|---|---|---|")
    for level in (float(v) for v in args.levels.split(",")):
        persistent = moving = 0
        errors = []
        for i, caption in enumerate(captions):
            with torch.inference_mode():
                x = sample_flow_matching(velocity(contexts[i : i + 1]), velocity(null), latents[i : i + 1].shape,
                                         torch.Generator().manual_seed(i), args.steps, d.guidance,
                                         d.shift, start=(latents[i : i + 1], level))
            analysis = analyse_clip(pipe.decode(x))
            persistent += check_persistence(analysis)
            moving += check_direction(analysis, parse_prompt(caption).motion)
            errors.append(np.nanmean(np.linalg.norm(analysis.centroids - truth[i].centroids, axis=1)))
        n = len(captions)
        print(f"| {level:.2f} | {persistent}/{n} | {moving}/{n} | {np.nanmean(errors):.1f} |", flush=True)


if __name__ == "__main__":
    main()
