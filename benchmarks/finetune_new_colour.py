"""Teach alice-tiny a colour it never saw (azure) with `finetune`, and score the 4-step student on SynthBench's
azure probe prompts: no LoRA, the teacher's adapter transferred as is (student_steps=0), and the rCM-refined
student adapter. Prints a markdown table (mean +- 95% CI over seeds) and the training wall times.

    python benchmarks/finetune_new_colour.py --teacher-steps 100 --student-steps 60 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from safetensors.torch import load_file

from alice_core.loading.lora import with_lora
from alice_core.pipeline import GenerationSettings, VideoPipeline, load_pipeline
from alice_core.train.clips import TrainingClip
from alice_core.train.finetune import FinetuneConfig, finetune
from alice_core.world import attribute_probe_prompts, format_table, render_attribute_clips, run_synthbench


def student_pipeline(lora: Path | None, onto_student: bool = False) -> VideoPipeline:
    """The bundled model with `lora` applied as its file says; onto_student puts a teacher adapter on the 4-step
    student instead (the file names the teacher, so the pipeline alone would leave the student untouched)."""
    pipe = load_pipeline(None)
    if lora is None:
        return pipe
    if not onto_student:
        return pipe.with_lora(lora, copy=False)
    patched = with_lora({"rcm": pipe.dits["rcm"]}, load_file(str(lora)), copy=False)
    return pipe.replace(dits={**pipe.dits, **patched})


def score(lora: Path | None, seeds: list[int], colour: str, onto_student: bool = False):
    pipe = student_pipeline(lora, onto_student)
    prompts = attribute_probe_prompts(colour)
    return run_synthbench(lambda p, s: pipe.generate(GenerationSettings(p, seed=s, sampler="rcm")).frames, prompts, seeds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--colour", default="azure")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--student-steps", type=int, default=60)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]

    frames, captions = render_attribute_clips(np.random.default_rng(0), args.clips, size=32, frames=9, colour=args.colour)
    clips = [TrainingClip(f, c) for f, c in zip(frames, captions)]
    cfg = FinetuneConfig(rank=args.rank, alpha=args.rank, teacher_steps=args.teacher_steps,
                         student_steps=args.student_steps, teacher_lr=1e-3)
    work = Path(tempfile.mkdtemp(prefix="alice-finetune-bench-"))
    try:
        stage_start: dict[str, float] = {}
        stage_end: dict[str, float] = {}

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            stage_start.setdefault(stage, time.perf_counter())
            stage_end[stage] = time.perf_counter()

        result = finetune(None, clips, cfg, work / "lora.safetensors", work / "run", progress=progress)
        rows = {
            "no LoRA": score(None, seeds, args.colour),
            f"teacher adapter transferred (stage 1 only, {args.teacher_steps} steps)": score(result.teacher_lora, seeds, args.colour, onto_student=True),
            f"rCM-refined student adapter (+{args.student_steps} iterations)": score(result.student_lora, seeds, args.colour),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = format_table(rows)
    times = ", ".join(f"{stage} {stage_end[stage] - stage_start[stage]:.0f} s" for stage in stage_start)
    text = (f"{len(attribute_probe_prompts(args.colour))} {args.colour} probe prompts x seeds {args.seeds}, 4-step student, "
            f"{args.clips} training clips, rank {args.rank}, {args.threads} thread(s); training wall time: {times}\n\n{table}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
