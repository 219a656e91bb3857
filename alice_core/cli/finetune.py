"""`alice finetune`: LoRA finetune of a model bundle on a folder of captioned clips (the same API as the node and app)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import AliceError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..train.finetune_config import FinetuneConfig  # not finetune: it imports FSDP (~1 s)

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune",
        help="train a LoRA for the 4-step student on your clips (teacher LoRA, then rCM); rerun to resume",
    )
    p.add_argument("--clips", required=True, help="folder of videos; each video's caption in a .txt file of the same name")
    p.add_argument("--caption", default=None, help="one caption for every clip instead of the .txt files")
    p.add_argument("-o", "--output", required=True, help="student LoRA file (.safetensors); the teacher LoRA is written beside it")
    p.add_argument("--work-dir", default=None, help="checkpoint folder, resumed from (default: one per output file "
                                                    "in $ALICE_HOME/alice-finetune, never beside the LoRA: UIs list "
                                                    "every file in a LoRA folder)")
    p.add_argument("--model", default=None, help="model bundle name or folder (default: alice-tiny)")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--target-modules", default=",".join(d.target_modules), help="comma-separated Linear names")
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps)
    p.add_argument("--student-steps", type=int, default=d.student_steps)
    p.add_argument("--teacher-lr", type=float, default=d.teacher_lr)
    p.add_argument("--student-lr", type=float, default=d.student_lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--mode", choices=("rcm", "scm", "dmd"), default=d.distill_mode, help="stage-2 distillation")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--sample-prompt", action="append", default=[], help="stored in the LoRA's metadata (repeatable)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..limits import check_output_location, parse_device
    from ..train.clips import clips_from_folder
    from ..train.distributed import process_group_from_env, rank_world
    from ..train.finetune import FinetuneConfig, default_work_folder
    from ..train.finetune_job import FinetuneOutputsExist, run_finetune_job

    output = check_output_location(args.output, "-o")
    if args.device is not None:
        parse_device(args.device)
    cfg = FinetuneConfig(
        rank=args.rank, alpha=args.alpha, target_modules=tuple(t for t in args.target_modules.split(",") if t),
        teacher_steps=args.teacher_steps, student_steps=args.student_steps, teacher_lr=args.teacher_lr,
        student_lr=args.student_lr, batch_size=args.batch_size, distill_mode=args.mode, seed=args.seed,
        checkpoint_every=args.checkpoint_every, sample_prompts=tuple(args.sample_prompt),
    )
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, initial=step - 1, desc=f"finetune {stage}", unit="step", file=sys.stderr)
        bars[stage].update(1)
        bars[stage].set_postfix(loss=f"{loss:.4f}")

    work_dir = Path(args.work_dir) if args.work_dir else default_work_folder(output)
    try:
        with process_group_from_env():  # torchrun: one process per GPU (or CPU gloo), FSDP-sharded networks
            result = run_finetune_job(args.model, lambda: clips_from_folder(args.clips, args.caption), cfg, output,
                                      work_dir, device=args.device, threads=args.threads, progress=progress)
            if rank_world()[0] != 0:
                return 0
    except FinetuneOutputsExist as exc:
        raise AliceError(f"{exc.path} already exists; choose another -o path or delete it") from None
    finally:
        for bar in bars.values():
            bar.close()
    print(result.student_lora)
    print(result.teacher_lora)
    return 0
