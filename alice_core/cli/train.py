"""`alice train teacher|distill|bundle|pack|export` (the alice-tiny stages) and `alice bench` (SynthBench)."""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import AliceError
from ..loading.output import write_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train alice-tiny stages (resumable: rerun the same command to continue)")
    stages = p.add_subparsers(dest="stage", required=True)
    t = stages.add_parser("teacher", help="flow-matching teacher on procedurally rendered clips",
                          description="A resumed run keeps its recipe; the recipe flags given change it from there "
                                      "(sizes, strides and the latent cannot change).")
    t.add_argument("--out", required=True, help="run folder (checkpoint.pt, loss.csv); resumes if it has a checkpoint")
    # Recipe flags default to None: only the ones given override a resumed run's recipe; a new run takes
    # TeacherTrainConfig's defaults (not imported here: building the parser must not import torch).
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--size", type=int, default=None)
    t.add_argument("--frames", type=int, default=None)
    t.add_argument("--temporal-stride", type=int, default=None, help="frames packed per latent frame (a new run only)")
    t.add_argument("--checkpoint-every", type=int, default=None)
    t.add_argument("--latent-transform", choices=("none", "haar"), default=None,
                   help="haar: orthonormal Haar transform of each space-to-depth block, normalised per channel")
    t.add_argument("--high-noise-fraction", type=float, default=None,
                   help="share of training noise levels drawn uniformly in [--high-noise-min, 1)")
    t.add_argument("--high-noise-min", type=float, default=None)
    t.add_argument("--frame-noise-fraction", type=float, default=None,
                   help="share of samples whose latent frames get noise levels of their own (teaches frame-to-frame motion)")
    t.add_argument("--loss-weighting", choices=("none", "min_snr"), default=None,
                   help="min_snr: Min-SNR-gamma weighting of the velocity loss")
    t.add_argument("--min-snr-gamma", type=float, default=None)
    t.add_argument("--object-loss-weight", type=float, default=None,
                   help="extra loss weight on the object's pixels (teaches shape: the object is a few %% of a clip)")
    t.add_argument("--curriculum", choices=("none", "straight_first"), default=None,
                   help="straight_first: no bouncing clips until the in-training direction score reaches --curriculum-gate")
    t.add_argument("--curriculum-gate", type=float, default=None)
    t.add_argument("--autocast", choices=("none", "bf16"), default=None,
                   help="bf16: train under bf16 autocast (1.4x faster on a CPU with AVX512-BF16; on most GPUs)")
    t.add_argument("--eval-every", type=int, default=None,
                   help="score held-out SynthBench prompts with the EMA weights every N steps into metrics.csv (0: off)")
    t.add_argument("--eval-prompts", type=int, default=None)
    t.add_argument("--eval-steps", type=int, default=None, help="teacher sampler steps of the in-training evaluation")
    t.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 when sharing the CPU)")
    t.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    t.add_argument("--resume-pack", default=None, help="start from a committed resume pack when --out has no checkpoint")
    t.add_argument("--init-from", default=None,
                   help="a new run starts from this resume pack of a teacher at a larger --temporal-stride")
    r = stages.add_parser("pack", help="write a small committable resume pack of a teacher or distillation run")
    # dest run_dir: "run" is where each subcommand keeps its dispatch function (set_defaults(run=...))
    r.add_argument("run_dir", metavar="run", help="the teacher or distillation run folder")
    r.add_argument("folder")
    e = stages.add_parser("export", help="write a run's EMA weights as a DiT safetensors file")
    e.add_argument("checkpoint")
    e.add_argument("output")
    d = stages.add_parser("distill", help="rCM distillation of a bundle's teacher into a 4-step student")
    d.add_argument("--teacher-bundle", required=True, help="model bundle folder holding the teacher")
    d.add_argument("--out", required=True, help="run folder; resumes if it has a checkpoint")
    d.add_argument("--mode", choices=("rcm", "scm", "dmd", "cfg"), default="rcm",
                   help="cfg: guidance distillation only, a first stage for --init-student")
    d.add_argument("--steps", type=int, default=4000)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--guidance", type=float, default=3.0, help="teacher CFG folded into the student")
    d.add_argument("--lr", type=float, default=5e-5)
    d.add_argument("--tangent-warmup", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--checkpoint-every", type=int, default=50)
    d.add_argument("--max-minutes", type=float, default=None)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--device", default=None)
    d.add_argument("--student-update-freq", type=int, default=5, help="after warm-up, 1 student update per N iterations")
    d.add_argument("--mining-every", type=int, default=0,
                   help="hard-example mining: score the student on held-out probe prompts every N iterations and "
                        "render more clips like the ones it fails (0: off)")
    d.add_argument("--mining-fraction", type=float, default=0.5, help="share of clips drawn from the mined failures")
    d.add_argument("--resume-pack", default=None, help="start from a committed resume pack when --out has no checkpoint")
    d.add_argument("--init-student", default=None,
                   help="a DiT file the student starts from instead of the teacher (a --mode cfg run, exported)")
    b = stages.add_parser("bundle", help="assemble a model bundle (model.json + weights) from training runs")
    b.add_argument("--teacher-run", required=True)
    b.add_argument("--student-run", default=None)
    b.add_argument("--out", required=True, help="bundle folder, e.g. alice_core/bundled/alice-tiny")
    b.add_argument("--name", default="alice-tiny")
    p.set_defaults(run=run)
    _add_bench(sub)


def run(args: argparse.Namespace) -> int:
    from ..train.teacher import TeacherTrainConfig, export_dit, tiny_dit_config, train_teacher, write_tiny_bundle

    if args.stage == "export":
        print(export_dit(args.checkpoint, args.output))
        return 0
    if args.stage == "pack":
        from ..train.state import write_run_resume_pack

        print(write_run_resume_pack(args.run_dir, args.folder))
        return 0
    if args.stage == "bundle":
        print(write_tiny_bundle(args.out, args.teacher_run, args.student_run, args.name))
        return 0
    if args.stage == "distill":
        from ..train.distill import DistillConfig, distill
        from ..train.distributed import process_group_from_env, rank_world

        cfg = DistillConfig(mode=args.mode, steps=args.steps, batch_size=args.batch_size, guidance=args.guidance,
                            student_lr=args.lr, fake_score_lr=args.lr, tangent_warmup=args.tangent_warmup,
                            seed=args.seed, checkpoint_every=args.checkpoint_every,
                            student_update_freq=args.student_update_freq, mining_every=args.mining_every,
                            mining_fraction=args.mining_fraction, init_student=args.init_student)
        with process_group_from_env():  # torchrun: one process per GPU (or CPU gloo), FSDP-sharded networks
            ckpt = distill(args.teacher_bundle, cfg, args.out, args.device, args.threads, args.max_minutes,
                           args.resume_pack)
            if rank_world()[0] == 0:
                print(ckpt)
        return 0
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TeacherTrainConfig)
             if getattr(args, f.name, None) is not None}
    cfg = TeacherTrainConfig(**given)
    cfg.dit = tiny_dit_config(cfg.latent_channels()).to_dict()
    print(train_teacher(cfg, args.out, device=args.device, threads=args.threads, max_minutes=args.max_minutes,
                        resume_pack=args.resume_pack, init_from=args.init_from, overrides=given))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="score a model on SynthBench's held-out prompts (table with 95%% CIs over seeds)")
    p.add_argument("--model", default=None)
    p.add_argument("--runs", default="rcm:4,teacher:50", help="comma-separated sampler:steps[:guidance]")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--split", default="heldout", choices=("heldout", "train_check"))
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ..bench import BenchRun, bench_pipeline, format_bench_table
    from ..pipeline import load_pipeline
    from ..world import synthbench_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [BenchRun.parse(r) for r in args.runs.split(",") if r]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise AliceError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    prompts = synthbench_prompts(args.split)[: args.limit]
    table = format_bench_table(bench_pipeline(load_pipeline(args.model), runs, prompts, seeds))
    print(table)
    if args.out:
        write_text(args.out, table + "\n")
    return 0
