"""Seed spread ("lucky path"): one held-out prompt, many noise seeds, every ablation row — how often each row gets
the prompt right and how much its clips vary from seed to seed.

The rCM claim under test: a few-step student maps most noise seeds onto a good clip (a "lucky path"), where its
teacher's many steps wander more. Per row: pass rate per attribute with a 95% Wilson interval over the seeds, and
the spread (standard deviation over seeds) of the object's travel along the prompted direction, in pixels.

    python benchmarks/seed_spread.py --teacher alice_core/bundled/alice-tiny --student rcm=alice_core/bundled/alice-tiny/student.safetensors \\
        --rows teacher50,teacher4,rcm1,rcm2,rcm4 --seeds 32 --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alice_core.bundle import resolve_bundle
from alice_core.errors import AliceError
from alice_core.loading.dit import load_dit
from alice_core.loading.output import write_text
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.world.captions import parse_prompt, synthbench_prompts
from alice_core.world.detector import analyse_clip
from alice_core.world.render import DIRECTIONS
from alice_core.world.synthbench import score_clip
from benchmarks.rcm_ablation import ROWS, parse_rows, parse_students, student_dit_file

DEFAULT_PROMPT = "a video of a yellow block drifting rightward"  # held out; straight motion, so travel is defined
SPREAD_ATTRIBUTES = ("colour", "shape", "direction", "persistence", "all")


def wilson_interval(passed: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a pass rate (sound at 0 or all passes, unlike the normal approximation)."""
    z = 1.959963984540054  # the 97.5% normal quantile
    rate = passed / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def travel_px(clip: np.ndarray, direction: str) -> float:
    """The object's displacement along `direction` from its first to its last detected frame (nan if never found)."""
    analysis = analyse_clip(clip)
    present = np.flatnonzero(analysis.present)
    if present.size < 2:
        return math.nan
    moved = analysis.centroids[present[-1]] - analysis.centroids[present[0]]
    return float(moved @ np.array(DIRECTIONS[direction], dtype=np.float64))


def measure(pipe, row, prompt: str, seeds: int) -> dict:
    attributes = parse_prompt(prompt)
    passes = {a: 0 for a in SPREAD_ATTRIBUTES}
    travels, seconds = [], []
    for seed in range(seeds):
        start = time.perf_counter()
        clip = pipe.generate(GenerationSettings(prompt, seed=seed, sampler=row.sampler, steps=row.steps)).frames
        seconds.append(time.perf_counter() - start)
        score = score_clip(clip, attributes)
        for a in SPREAD_ATTRIBUTES:
            passes[a] += bool(getattr(score, a))
        travels.append(travel_px(clip, attributes.motion))
    return {"passes": passes, "travel": np.array(travels), "seconds": float(np.median(seconds))}


def table(results: dict, prompt: str, seeds: int, rendered_travel: float) -> str:
    header = ["row", *SPREAD_ATTRIBUTES, "travel px (mean ± sd)", "s/video"]
    lines = [f"Prompt: \"{prompt}\", seeds 0-{seeds - 1}; pass rate % [95% Wilson interval]; rendered travel "
             f"{rendered_travel:.1f} px.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, r in results.items():
        cells = [label]
        for a in SPREAD_ATTRIBUTES:
            low, high = wilson_interval(r["passes"][a], seeds)
            cells.append(f"{100 * r['passes'][a] / seeds:.0f} [{100 * low:.0f}-{100 * high:.0f}]")
        travel = r["travel"][~np.isnan(r["travel"])]
        cells.append(f"{travel.mean():.1f} ± {travel.std(ddof=1):.1f}" if travel.size > 1 else "-")
        cells.append(f"{r['seconds']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rendered_travel(prompt: str, size: int, frames: int, seeds: int) -> float:
    from alice_core.world.synthbench import render_reference

    attributes = parse_prompt(prompt)
    return float(np.nanmean([travel_px(render_reference(attributes, s, prompt, size, frames), attributes.motion)
                             for s in range(seeds)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher model bundle folder")
    parser.add_argument("--student", action="append", default=[], metavar="MODE=PATH", help="as in rcm_ablation.py")
    parser.add_argument("--rows", default="teacher50,teacher4,rcm1,rcm2,rcm4",
                        help=f"comma-separated of {', '.join(r.key for r in ROWS)}")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="a held-out prompt with a straight motion")
    parser.add_argument("--seeds", type=int, default=32, help="noise seeds 0..N-1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", default="runs/rcm-ablation-cache", help="where exported students are kept")
    parser.add_argument("--out", default="docs/seed-spread.md")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 2:
            raise AliceError(f"--seeds must be at least 2 to measure a spread; got {args.seeds}")
        if args.prompt not in synthbench_prompts("heldout") or parse_prompt(args.prompt).motion in (None, "bounce"):
            raise AliceError(f"--prompt {args.prompt!r} must be a held-out SynthBench prompt with a straight motion")
        if args.threads:
            torch.set_num_threads(args.threads)
        rows, students = parse_rows(args.rows), parse_students(args.student)
        bundle = resolve_bundle(args.teacher)
        if bundle is None or "teacher" not in bundle.dits:
            raise AliceError(f"--teacher {args.teacher}: expected a model bundle folder with a teacher")
        teacher = load_pipeline(str(bundle.folder))
        pipes = {"teacher": teacher}
        for mode in {r.network for r in rows} - {"teacher"}:
            if mode not in students:
                raise AliceError(f"rows of {mode} need --student {mode}=RUN_DIR_OR_DIT_FILE")
            pipes[mode] = teacher.replace(dits={"rcm": load_dit(student_dit_file(mode, students[mode], Path(args.cache)))})
        results = {}
        for row in rows:
            print(f"[{row.key}] {args.seeds} seeds ...", file=sys.stderr, flush=True)
            results[row.label] = measure(pipes[row.network], row, args.prompt, args.seeds)
        settings = teacher.resolve(GenerationSettings(args.prompt))
        report = table(results, args.prompt, args.seeds, rendered_travel(args.prompt, settings.width, settings.frames,
                                                                         args.seeds))
        write_text(Path(args.out), "# Seed spread (lucky path)\n\n" + report, replace=True)  # rewritten on purpose
        print(report)
    except AliceError as exc:
        print(f"seed_spread: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
