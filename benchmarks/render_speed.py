"""Milliseconds per rendered training clip (the renderer feeds every training step), measured in one run.

    python benchmarks/render_speed.py [--clips 200]

Prints a markdown table per clip size and curriculum stage; the target is under 10 ms per clip at 64x64, 17 frames.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from alice_core.world.render import HardExampleWeights, render_clip, sample_clip_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    args = parser.parse_args()
    print("| size x frames | stage | ms per clip |\n|---|---|---|")
    for size, frames in ((32, 9), (64, 17)):
        for stage, weights in (("easy", HardExampleWeights()), ("hard", HardExampleWeights.hard_stage())):
            rng = np.random.default_rng(0)
            specs = [sample_clip_spec(rng, size, frames, hard_weights=weights) for _ in range(args.clips)]
            started = time.perf_counter()
            for spec in specs:
                render_clip(spec)
            print(f"| {size}x{size} x {frames} | {stage} | {1000 * (time.perf_counter() - started) / len(specs):.2f} |")


if __name__ == "__main__":
    main()
