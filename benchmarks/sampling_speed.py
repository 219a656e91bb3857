"""Wall time per video of the bundled model's samplers, measured in one run on this machine.

    python benchmarks/sampling_speed.py [--model alice-tiny] [--repeats 3] [--threads N]

Prints a markdown table: sampling seconds per video (median over repeats), network passes, and the speed-up
against the 50-step teacher with classifier-free guidance (two passes per step).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from alice_core.pipeline import GenerationSettings, load_pipeline

RUNS = [("teacher", 50, 2), ("teacher", 4, 2), ("rcm", 4, 1), ("rcm", 2, 1), ("rcm", 1, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    # Student rows use the student weights when the model has them, else the teacher's: the cost is the same network.
    sampler_for = {"teacher": "teacher" if "teacher" in pipe.dits else "rcm", "rcm": "rcm" if "rcm" in pipe.dits else "teacher"}
    rows = []
    for sampler, steps, passes in RUNS:
        times = []
        for seed in range(args.repeats):
            video = pipe.generate(GenerationSettings("a red ball bouncing", seed=seed, sampler=sampler_for[sampler], steps=steps,
                                                     guidance=None if sampler == "teacher" else 1.0))
            times.append(video.timings["sampling"])
        rows.append((f"{sampler} {steps} steps" + (" + CFG" if passes == 2 else ""), steps * passes, statistics.median(times)))
    base = rows[0][2]
    print(f"model {pipe.name}, {pipe.defaults.width}x{pipe.defaults.height}x{pipe.defaults.frames}, "
          f"torch threads {torch.get_num_threads()}")
    print("| run | network passes | s/video (sampling) | speed-up vs teacher 50 + CFG |")
    print("|---|---|---|---|")
    for name, passes, seconds in rows:
        print(f"| {name} | {passes} | {seconds:.3f} | {base / seconds:.1f}x |")


if __name__ == "__main__":
    main()
