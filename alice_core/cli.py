"""The `alice` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import AliceError
from .finetune_cli import add_finetune_parser, run_finetune
from .hub_cli import add_download_parser, run_download
from .loading.convert import add_convert_parser, run_convert
from .loading.quant import PRECISION_NAMES

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", required=True, help="output file: .mp4, .webm or .gif (never overwritten)")
    p.add_argument("--model", default=None, help="bundled model name (default alice-tiny), bundle folder or checkpoint file")
    p.add_argument("--vae", default=None, help="Wan2.1 VAE file (for a single checkpoint file)")
    p.add_argument("--text-encoder", default=None, help="text encoder: 'minilm' or a umT5 folder")
    p.add_argument("--sampler", choices=("rcm", "teacher"), default=None, help="default: the model's (rcm for alice-tiny)")
    p.add_argument("--steps", type=int, default=None, help="rcm: 1-4 (default 4); teacher: default 50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="4k+1 frames (model default if omitted)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--fps", type=int, default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guidance", type=float, default=None, help="teacher CFG scale")
    p.add_argument("--shift", type=float, default=None, help="teacher flow shift")
    p.add_argument("--sigma-max", type=float, default=None, help="rCM starting sigma (default 80)")
    p.add_argument("--ode", action="store_true", help="rCM: deterministic ODE steps instead of re-noising")
    p.add_argument("--precision", choices=PRECISION_NAMES, default="fp32",
                   help="fp8_* and nf4 store weights quantised (nf4 needs bitsandbytes)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="apply a LoRA (kohya, PEFT/diffusers or lightx2v diff format); repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--crf", type=int, default=19, help="mp4/webm quality (lower is better)")
    p.add_argument("--download", action="store_true", help="fetch a catalogue model (see alice download --list) if missing")


def _check_output_path(output: str) -> Path:
    path = Path(output).expanduser()
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise AliceError(f"output {path} must end in {', '.join(VIDEO_SUFFIXES)}")
    if path.exists():
        raise AliceError(f"{path} already exists; choose another -o path or delete it")
    if not path.parent.is_dir():
        raise AliceError(f"output folder {path.parent} does not exist; create it first")
    return path


def _apply_lora_arg(pipe, spec: str) -> None:
    from .loading.lora import apply_lora, lora_samplers

    path, _, strength = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    try:
        value = float(strength) if strength else 1.0
    except ValueError:
        raise AliceError(f"--lora {spec!r}: strength must be a number, e.g. --lora my_lora.safetensors:0.8") from None
    targets = [pipe.dits[name] for name in lora_samplers(path, list(pipe.dits))]
    for dit in {id(d): d for d in targets}.values():  # a single checkpoint serves both samplers
        print(apply_lora(dit, path, strength=value).summary(), file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline import GenerationSettings, load_pipeline

    from .hub_cli import catalogue_pipeline_args

    output = _check_output_path(args.output)
    found = catalogue_pipeline_args(args.model, args.download)  # None for bundles and checkpoint paths
    if found:
        args.model = found["model"]
        args.vae = args.vae or found["vae"]
        args.text_encoder = args.text_encoder or found["text_encoder"]
    pipe = load_pipeline(args.model, args.precision, args.vae, args.text_encoder, args.device)
    settings = GenerationSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, sampler=args.sampler,
        steps=args.steps, width=args.width, height=args.height, frames=args.frames, fps=args.fps,
        sigma_max=args.sigma_max, ode=args.ode, guidance=args.guidance, shift=args.shift,
    )
    pipe.resolve(settings)  # fail on bad settings before any work
    for spec in args.lora:
        _apply_lora_arg(pipe, spec)

    from tqdm import tqdm

    bar = tqdm(total=None, desc="sampling", unit="step", file=sys.stderr, leave=False)

    def progress(done: int, total: int, _x0) -> None:
        bar.total = total
        bar.update(1)

    try:
        video = pipe.generate(settings, progress=progress)
    finally:
        bar.close()
    path = pipe.save(video, output, crf=args.crf)
    t = video.timings
    print(path)
    print(
        f"text encoding {t['text_encoding']:.2f}s, sampling {t['sampling']:.2f}s "
        f"({video.settings.sampler}, {video.settings.steps} steps), decoding {t['decoding']:.2f}s"
    )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train alice-tiny stages (resumable: rerun the same command to continue)")
    stages = p.add_subparsers(dest="stage", required=True)
    t = stages.add_parser("teacher", help="flow-matching teacher on procedurally rendered clips")
    t.add_argument("--out", required=True, help="run folder (checkpoint.pt, loss.csv); resumes if it has a checkpoint")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", type=int, default=32)
    t.add_argument("--frames", type=int, default=9)
    t.add_argument("--temporal-stride", type=int, default=4, help="frames packed per latent frame (a new run only)")
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 when sharing the CPU)")
    t.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    t.add_argument("--resume-pack", default=None, help="start from a committed resume pack when --out has no checkpoint")
    t.add_argument("--init-from", default=None,
                   help="a new run starts from this resume pack of a teacher at a larger --temporal-stride")
    r = stages.add_parser("pack", help="write a small committable resume pack of a teacher or distillation run")
    r.add_argument("run")
    r.add_argument("folder")
    e = stages.add_parser("export", help="write a run's EMA weights as a DiT safetensors file")
    e.add_argument("checkpoint")
    e.add_argument("output")
    d = stages.add_parser("distill", help="rCM distillation of a bundle's teacher into a 4-step student")
    d.add_argument("--teacher-bundle", required=True, help="model bundle folder holding the teacher")
    d.add_argument("--out", required=True, help="run folder; resumes if it has a checkpoint")
    d.add_argument("--mode", choices=("rcm", "scm", "dmd"), default="rcm")
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
    d.add_argument("--resume-pack", default=None, help="start from a committed resume pack when --out has no checkpoint")
    b = stages.add_parser("bundle", help="assemble a model bundle (model.json + weights) from training runs")
    b.add_argument("--teacher-run", required=True)
    b.add_argument("--student-run", default=None)
    b.add_argument("--out", required=True, help="bundle folder, e.g. alice_core/bundled/alice-tiny")
    b.add_argument("--name", default="alice-tiny")


def cmd_train(args: argparse.Namespace) -> int:
    from .train.teacher import TeacherTrainConfig, export_dit, tiny_dit_config, train_teacher, write_tiny_bundle

    if args.stage == "export":
        print(export_dit(args.checkpoint, args.output))
        return 0
    if args.stage == "pack":
        from .train.state import write_run_resume_pack

        print(write_run_resume_pack(args.run, args.folder))
        return 0
    if args.stage == "bundle":
        print(write_tiny_bundle(args.out, args.teacher_run, args.student_run, args.name))
        return 0
    if args.stage == "distill":
        from .train.distill import DistillConfig, distill, init_distributed_from_env

        init_distributed_from_env()
        cfg = DistillConfig(mode=args.mode, steps=args.steps, batch_size=args.batch_size, guidance=args.guidance,
                            student_lr=args.lr, fake_score_lr=args.lr, tangent_warmup=args.tangent_warmup,
                            seed=args.seed, checkpoint_every=args.checkpoint_every,
                            student_update_freq=args.student_update_freq)
        print(distill(args.teacher_bundle, cfg, args.out, args.device, args.threads, args.max_minutes, args.resume_pack))
        return 0
    cfg = TeacherTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, size=args.size,
                             frames=args.frames, checkpoint_every=args.checkpoint_every,
                             temporal_stride=args.temporal_stride)
    cfg.dit = tiny_dit_config(cfg.latent_channels()).to_dict()
    print(train_teacher(cfg, args.out, device=args.device, threads=args.threads, max_minutes=args.max_minutes,
                        resume_pack=args.resume_pack, init_from=args.init_from))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="score a model on SynthBench's held-out prompts (table with 95% CIs over seeds)")
    p.add_argument("--model", default=None)
    p.add_argument("--runs", default="rcm:4,teacher:50", help="comma-separated sampler:steps[:guidance]")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--split", default="heldout", choices=("heldout", "train_check"))
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import BenchRun, bench_pipeline, format_bench_table
    from .pipeline import load_pipeline
    from .world import synthbench_prompts

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
        Path(args.out).write_text(table + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alice", description="Alice: fast 4-step text-to-video")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_train(sub)
    _add_bench(sub)
    add_download_parser(sub)
    add_convert_parser(sub)
    add_finetune_parser(sub)
    try:  # the app ships beside alice_core (webui/); a library-only install has no `alice app`
        from webui.cli import add_app_parser
    except ImportError:
        pass
    else:
        add_app_parser(sub)
    sub.add_parser("models", help="list bundled models")
    return parser


def cmd_models(_args: argparse.Namespace) -> int:
    from .bundle import bundled_models

    for name in bundled_models():
        print(name)
    return 0


COMMANDS = {
    "generate": cmd_generate, "models": cmd_models, "train": cmd_train, "bench": cmd_bench, "download": run_download,
    "convert": run_convert, "finetune": run_finetune,
    "app": lambda args: __import__("webui.cli", fromlist=["run_app"]).run_app(args),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AliceError as exc:
        print(f"alice: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alice: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
