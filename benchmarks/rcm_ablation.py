"""rCM ablation on SynthBench's held-out prompts: teacher vs sCM-only vs DMD-only vs rCM, with wall time per video.

Each row is computed on its own and cached as JSON, so slow and fast rows can run in separate processes; every run
then assembles the markdown report and the plot from whatever rows the cache holds for the requested prompts/seeds.

    # the slow row in one process, the others in a second one (both write into the cache) ...
    python benchmarks/rcm_ablation.py --teacher runs/final-teacher-bundle --rows teacher50 --threads 1
    python benchmarks/rcm_ablation.py --teacher runs/final-teacher-bundle --student rcm=runs/student \\
        --student scm=runs/student-scm --student dmd=runs/student-dmd --rows teacher4,scm4,dmd4,rcm1,rcm2,rcm4 --threads 1
    # ... then the report from the cache alone
    python benchmarks/rcm_ablation.py

Rows: teacher50, teacher4, scm4, dmd4, cfg4, rcm1, rcm2, rcm4 (or "all"). A student is a distillation run folder
(checkpoint.pt from alice_core/train/distill.py; its EMA weights are exported into the cache) or a DiT .safetensors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


from alice_core.bundle import resolve_bundle
from alice_core.errors import AliceError
from alice_core.loading.checkpoint import read_safetensors_metadata
from alice_core.loading.dit import load_dit
from alice_core.loading.output import atomic_output, file_sha256
from alice_core.pipeline import GenerationSettings, VideoPipeline, load_pipeline
from alice_core.train.distill import MODES
from alice_core.train.state import load_checkpoint
from alice_core.train.teacher import export_dit
from alice_core.world.captions import synthbench_prompts
from alice_core.world.frame_quality import FrameQuality
from alice_core.world.synthbench import ATTRIBUTES, ClipScore, SynthBenchResult, format_table, run_synthbench

CACHE_VERSION = 1
PLOT_ATTRIBUTES = ("colour", "shape", "direction", "persistence")
# Scores the verdict compares (wrong_label_motion is a chance baseline, lower is better: not a score).
VERDICT_ATTRIBUTES = ("colour", "shape", "direction", "bounce", "persistence", "all")
TARGET_SPEEDUP = 20.0
WARMUP_PROMPT = "a red ball bouncing"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    network: str  # "teacher" or a distillation mode (the student trained that way)
    steps: int

    @property
    def sampler(self) -> str:
        return "teacher" if self.network == "teacher" else "rcm"


ROWS = (
    Row("teacher50", "teacher 50 steps + CFG", "teacher", 50),
    Row("teacher4", "teacher 4 steps + CFG", "teacher", 4),
    Row("scm4", "sCM-only 4 steps", "scm", 4),
    Row("dmd4", "DMD-only 4 steps", "dmd", 4),
    # The first stage of the shipped recipe: the teacher's CFG folded in by regression, no consistency loss.
    Row("cfg4", "guidance-distilled only 4 steps", "cfg", 4),
    Row("rcm1", "rCM 1 step", "rcm", 1),
    Row("rcm2", "rCM 2 steps", "rcm", 2),
    Row("rcm4", "rCM 4 steps", "rcm", 4),
)
ROW_BY_KEY = {row.key: row for row in ROWS}
BASELINE, CANDIDATE = ROW_BY_KEY["teacher50"], ROW_BY_KEY["rcm4"]


# ------------------------------------------------------------------------------------------------------ arguments
def parse_rows(text: str | None) -> list[Row]:
    if not text:
        return []
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if keys == ["all"]:
        return list(ROWS)
    unknown = [k for k in keys if k not in ROW_BY_KEY]
    if unknown:
        raise AliceError(f"unknown row(s) {', '.join(unknown)} in --rows; use 'all' or some of {', '.join(ROW_BY_KEY)}")
    return [ROW_BY_KEY[k] for k in dict.fromkeys(keys)]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise AliceError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise AliceError(f"--seeds needs distinct integers, e.g. 0,1,2; got {text!r}")
    return seeds


def parse_students(specs: list[str]) -> dict[str, Path]:
    """'rcm=runs/student' -> {"rcm": Path("runs/student")}; the mode names the distillation that made it."""
    students: dict[str, Path] = {}
    for spec in specs:
        mode, sep, path = spec.partition("=")
        if not sep or mode not in MODES or not path:
            raise AliceError(f"bad --student {spec!r}; write MODE=RUN_DIR_OR_DIT_FILE with MODE one of "
                             f"{', '.join(MODES)}, e.g. --student rcm=runs/student")
        if mode in students:
            raise AliceError(f"--student {mode}= given twice; pass one run folder or DiT file per mode")
        if not Path(path).exists():
            raise AliceError(f"--student {spec}: {path} does not exist; pass a distillation run folder "
                             "(with checkpoint.pt) or an exported DiT .safetensors file")
        students[mode] = Path(path)
    return students


def student_dit_file(mode: str, source: Path, cache: Path) -> Path:
    """The student's DiT file: as given, or the EMA weights of a distillation checkpoint exported into the cache."""
    if source.is_file() and source.suffix == ".safetensors":
        return source
    checkpoint = source / "checkpoint.pt" if source.is_dir() else source
    if checkpoint.suffix != ".pt" or not checkpoint.is_file():
        raise AliceError(f"--student {mode}={source}: expected a distillation run folder with checkpoint.pt, "
                         "a checkpoint.pt file, or a DiT .safetensors file")
    exported = cache / "students" / f"{mode}-{file_sha256(checkpoint)[:12]}.safetensors"
    if not exported.exists():  # named by the checkpoint's hash: a retrained run gets a fresh export
        trained_mode = load_checkpoint(checkpoint)["config"].get("mode")
        if trained_mode != mode:
            raise AliceError(f"--student {mode}={source}: that run was distilled with mode {trained_mode!r}; "
                             f"pass it as --student {trained_mode}={source}")
        exported.parent.mkdir(parents=True, exist_ok=True)
        export_dit(checkpoint, exported)
    return exported


# ----------------------------------------------------------------------------------------------------- measuring
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def network_info(path: Path, dit: torch.nn.Module, source: Path | None = None) -> dict:
    meta = read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}
    return {
        "file": str(path), "sha256": file_sha256(path)[:16], "source": str(source or path),
        "parameters": sum(p.numel() for p in dit.parameters()),
        "layers": dit.config.num_layers, "width": dit.config.dim,
        "train_step": int(meta["step"]) if "step" in meta else None,
    }


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def measure_row(row: Row, pipe: VideoPipeline, prompts: list[str], seeds: list[int]) -> dict:
    """SynthBench scores and wall time per video (text encoding + sampling + decoding) for one row."""
    settings = pipe.resolve(GenerationSettings(WARMUP_PROMPT, sampler=row.sampler, steps=row.steps))
    cfg = row.sampler == "teacher" and settings.guidance != 1.0  # the pipeline runs a second (uncond) pass per step
    pipe.generate(settings)  # warm-up: lazy initialisation must not count as the first clip's time
    totals: list[float] = []
    sampling: list[float] = []

    def generate(prompt: str, seed: int) -> np.ndarray:
        start = time.perf_counter()
        video = pipe.generate(GenerationSettings(prompt, seed=seed, sampler=row.sampler, steps=row.steps))
        totals.append(time.perf_counter() - start)
        sampling.append(video.timings["sampling"])
        return video.frames

    result = run_synthbench(generate, prompts, seeds)
    return {
        "version": CACHE_VERSION, "row": row.key, "label": row.label, "network": row.network,
        "sampler": row.sampler, "steps": row.steps, "guidance": settings.guidance if cfg else None,
        "passes_per_video": row.steps * (2 if cfg else 1),
        "width": settings.width, "height": settings.height, "frames": settings.frames,
        "prompts": list(prompts), "seeds": list(seeds), "clips": len(prompts) * len(seeds),
        "scores": [[{a: getattr(s, a) for a in ClipScore.__dataclass_fields__} for s in per_seed]
                   for per_seed in result.scores],
        "accuracy_per_seed": {a: [_finite_or_none(float(v)) for v in result.accuracy_per_seed(a)] for a in ATTRIBUTES},
        "frechet_distance": _finite_or_none(result.frechet_distance),
        "quality": [[[q.background_rms, q.fragments_per_frame] for q in per_seed] for per_seed in result.quality],
        "seconds_per_video": float(np.mean(totals)), "sampling_seconds_per_video": float(np.mean(sampling)),
        "seconds_per_clip": totals, "torch_threads": torch.get_num_threads(), "cpu": cpu_name(),
        "computed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def compute_rows(rows: list[Row], teacher: str, students: dict[str, Path], prompts: list[str], seeds: list[int],
                 cache: Path) -> None:
    bundle = resolve_bundle(teacher)
    if bundle is None:
        raise AliceError(f"--teacher {teacher}: expected a model bundle folder (model.json + teacher.safetensors)")
    if "teacher" not in bundle.dits:
        raise AliceError(f"{bundle.folder / 'model.json'}: no 'teacher' entry in dits; --teacher needs the teacher's bundle")
    missing = sorted({r.network for r in rows if r.network != "teacher"} - set(students))
    if missing:
        raise AliceError(f"rows {', '.join(r.key for r in rows if r.network in missing)} need "
                         + " ".join(f"--student {m}=RUN_DIR_OR_DIT_FILE" for m in missing))
    student_files = {mode: student_dit_file(mode, students[mode], cache) for mode in {r.network for r in rows} - {"teacher"}}
    teacher_pipe = load_pipeline(str(bundle.folder))
    teacher_info = {"bundle": str(bundle.folder), "name": bundle.name,
                    "teacher_sha256": file_sha256(bundle.dits["teacher"])[:16]}
    student_pipes = {}
    for mode, path in student_files.items():
        dit = load_dit(path)
        student_pipes[mode] = (teacher_pipe.replace(name=f"{bundle.name}-{mode}", dits={"rcm": dit}),
                               network_info(path, dit, students[mode]))
    for row in rows:
        if row.network == "teacher":
            pipe, info = teacher_pipe, network_info(bundle.dits["teacher"], teacher_pipe.dits["teacher"])
        else:
            pipe, info = student_pipes[row.network]
        print(f"[{row.key}] {row.label}: {len(prompts)} prompts x {len(seeds)} seeds ...", file=sys.stderr, flush=True)
        data = {**measure_row(row, pipe, prompts, seeds), "teacher_bundle": teacher_info, "dit": info}
        write_atomic(cache / f"{row.key}.json", (json.dumps(data, indent=1) + "\n").encode())
        print(f"[{row.key}] {data['seconds_per_video']:.3f} s/video -> {cache / (row.key + '.json')}", file=sys.stderr)


# -------------------------------------------------------------------------------------------------------- report
def write_atomic(path: Path, payload: bytes) -> None:
    """Replaced atomically under a temp name of this run's own: parallel runs never see or leave half-written files
    (the cache rows and the report are this benchmark's own files, rewritten on purpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, replace=True) as tmp:
        tmp.write_bytes(payload)


def load_cached_rows(cache: Path, prompts: list[str], seeds: list[int]) -> tuple[dict[str, dict], list[str]]:
    """Rows cached for exactly these prompts and seeds, and a note for each row that is not."""
    rows, notes = {}, []
    for row in ROWS:
        path = cache / f"{row.key}.json"
        if not path.exists():
            notes.append(f"{row.label}: not measured (no {path})")
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AliceError(f"{path}: invalid JSON ({exc}); delete it and recompute with --rows {row.key}") from None
        if data.get("version") != CACHE_VERSION or data["prompts"] != prompts or data["seeds"] != seeds:
            notes.append(f"{row.label}: cached for {len(data.get('prompts', []))} prompts x seeds {data.get('seeds')}, "
                         f"not the requested ones; recompute with --rows {row.key}")
            continue
        rows[row.key] = data
    teachers = {d["teacher_bundle"]["teacher_sha256"] for d in rows.values()}
    if len(teachers) > 1:
        raise AliceError(f"the rows in {cache} come from different teachers ({', '.join(sorted(teachers))}); "
                         "recompute the stale rows with --rows and the same --teacher")
    return rows, notes


def synthbench_result(data: dict) -> SynthBenchResult:
    scores = tuple(tuple(ClipScore(**clip) for clip in per_seed) for per_seed in data["scores"])
    fd = data["frechet_distance"]
    # Rows cached before frame quality was recorded have none: their bg RMS and fragments read nan.
    quality = tuple(tuple(FrameQuality(*clip) for clip in per_seed) for per_seed in data.get("quality", ()))
    return SynthBenchResult(tuple(data["prompts"]), tuple(data["seeds"]), scores,
                            math.nan if fd is None else fd, quality)


def results_table(rows: dict[str, dict], results: dict[str, SynthBenchResult]) -> str:
    """SynthBench's table (accuracy mean ± 95% CI over seeds, FD) with passes, timings and speed-up appended."""
    base = rows.get(BASELINE.key)
    table = format_table({rows[k]["label"]: results[k] for k in rows}).splitlines()
    lines = [table[0] + " passes/video | s/video | sampling s/video | speed-up vs teacher 50 |", table[1] + "---|" * 4]
    for line, data in zip(table[2:], rows.values()):
        speedup = f"{base['seconds_per_video'] / data['seconds_per_video']:.1f}×" if base else "-"
        lines.append(f"{line} {data['passes_per_video']} | {data['seconds_per_video']:.3f} | "
                     f"{data['sampling_seconds_per_video']:.3f} | {speedup} |")
    return "\n".join(lines)


def networks_table(rows: dict[str, dict]) -> str:
    lines = ["| run | network | steps | parameters | layers × width | training step | sha256 | source |",
             "|---|---|---|---|---|---|---|---|"]
    for data in rows.values():
        dit = data["dit"]
        step = "-" if dit["train_step"] is None else str(dit["train_step"])
        lines.append(f"| {data['label']} | {data['network']} | {data['steps']} | {dit['parameters'] / 1e6:.2f} M | "
                     f"{dit['layers']} × {dit['width']} | {step} | `{dit['sha256']}` | `{dit['source']}` |")
    return "\n".join(lines)


CLEARLY_BELOW = "below it (the 95% CIs do not overlap)"


def compare(candidate: tuple[float, float], baseline: tuple[float, float]) -> str:
    """How a mean ± CI half-width compares with the baseline's (a missing CI, from one seed, counts as 0)."""
    (m_c, h_c), (m_b, h_b) = candidate, baseline
    if math.isnan(m_c) or math.isnan(m_b):
        return "not asked by these prompts"
    h_c, h_b = (0.0 if math.isnan(h) else h for h in (h_c, h_b))
    if m_c >= m_b:
        return "reaches it"
    if m_c + h_c >= m_b - h_b:
        return "below its mean, within the 95% CIs (the intervals overlap)"
    return CLEARLY_BELOW


def verdict(rows: dict[str, dict], results: dict[str, SynthBenchResult]) -> str:
    lines = [f"Target: {CANDIDATE.label} scores at least the {BASELINE.label} score, and its sampling is at least "
             f"{TARGET_SPEEDUP:g}× faster. Every line below is computed from the table.", ""]
    if CANDIDATE.key not in rows or BASELINE.key not in rows:
        absent = [r.label for r in (BASELINE, CANDIDATE) if r.key not in rows]
        return "\n".join(lines + [f"Cannot judge: {' and '.join(absent)} not measured."])
    cand, base = results[CANDIDATE.key], results[BASELINE.key]
    failed = []
    for attribute in VERDICT_ATTRIBUTES:
        c, b = cand.accuracy(attribute), base.accuracy(attribute)
        outcome = compare(c, b)
        if outcome == CLEARLY_BELOW:
            failed.append(attribute)
        if not math.isnan(c[0]) and not math.isnan(b[0]):
            lines.append(f"- {attribute}: {100 * c[0]:.1f} ± {100 * c[1]:.1f} vs {100 * b[0]:.1f} ± {100 * b[1]:.1f}"
                         f" → {outcome}")
    fd_c, fd_b = rows[CANDIDATE.key]["frechet_distance"], rows[BASELINE.key]["frechet_distance"]
    if fd_c is not None and fd_b is not None:
        lines.append(f"- FD (lower is better): {fd_c:.3f} vs {fd_b:.3f}")
    score_met = not failed
    lines.append(f"- **Score target {'met' if score_met else 'not met'}**"
                 + ("" if score_met else f": below the teacher outside the CIs on {', '.join(failed)}"))
    c_data, b_data = rows[CANDIDATE.key], rows[BASELINE.key]
    sampling = b_data["sampling_seconds_per_video"] / c_data["sampling_seconds_per_video"]
    total = b_data["seconds_per_video"] / c_data["seconds_per_video"]
    passes = b_data["passes_per_video"] / c_data["passes_per_video"]
    lines.append(f"- Sampling: {c_data['sampling_seconds_per_video']:.3f} s vs {b_data['sampling_seconds_per_video']:.3f} s "
                 f"per video = {sampling:.1f}× faster; end to end (text + sampling + decoding) {total:.1f}×; "
                 f"network passes {b_data['passes_per_video']} vs {c_data['passes_per_video']} = {passes:.1f}×")
    lines.append(f"- **Speed target {'met' if sampling >= TARGET_SPEEDUP else 'not met'}** "
                 f"({sampling:.1f}× against {TARGET_SPEEDUP:g}×)")
    return "\n".join(lines)


def markdown(rows: dict[str, dict], notes: list[str], plot: Path | None, out: Path) -> str:
    results = {k: synthbench_result(d) for k, d in rows.items()}
    first = next(iter(rows.values()))
    teacher = first["teacher_bundle"]
    threads = sorted({d["torch_threads"] for d in rows.values()})
    cpus = sorted({d["cpu"] for d in rows.values()})
    computed = sorted(d["computed_at"] for d in rows.values())
    parts = [
        "# rCM ablation on SynthBench",
        "",
        f"Generated by `benchmarks/rcm_ablation.py` on {datetime.date.today().isoformat()} from rows measured "
        f"{computed[0]} to {computed[-1]} (UTC); the numbers are measured, not edited.",
        "",
        f"- Prompts: the first {len(first['prompts'])} SynthBench held-out prompts × seeds "
        f"{', '.join(map(str, first['seeds']))} = {first['clips']} clips per row",
        f"- Video: {first['width']}×{first['height']}, {first['frames']} frames; teacher bundle `{teacher['name']}` "
        f"(`{teacher['bundle']}`, teacher sha256 `{teacher['teacher_sha256']}`); students use its autoencoder, text "
        "encoder and defaults with the rCM sampler",
        f"- CPU: {', '.join(cpus)}; torch threads: {', '.join(map(str, threads))}"
        + ("" if len(threads) == 1 else " (rows differ: " + ", ".join(f"{d['label']} {d['torch_threads']}"
                                                                    for d in rows.values()) + ")"),
        "- s/video: mean wall time per video (text encoding + sampling + decoding, after one warm-up video); "
        "passes/video: DiT evaluations (CFG costs two per step)",
        "- Accuracy: % of prompts passing each check, mean ± 95% t confidence interval over seeds; "
        "wrong_label_motion is the motion check against a wrong label (a chance baseline, lower is better); "
        "FD: Fréchet distance of clip features to fresh renders (lower is better)",
    ]
    parts += ["", "## Results", "", results_table(rows, results), ""]
    if notes:
        parts += ["Missing rows:", "", *[f"- {note}" for note in notes], ""]
    if plot is not None:
        parts += [f"![accuracy and time per video]({os.path.relpath(plot, out.parent)})", ""]
    parts += ["## Networks", "", networks_table(rows), "", "## Verdict vs target", "", verdict(rows, results), ""]
    return "\n".join(parts)


def plot_png(rows: dict[str, dict]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {k: synthbench_result(d) for k, d in rows.items()}
    labels = [d["label"] for d in rows.values()]
    x = np.arange(len(labels))
    width = 0.8 / len(PLOT_ATTRIBUTES)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), height_ratios=(3, 2), sharex=True)
    for i, attribute in enumerate(PLOT_ATTRIBUTES):
        stats = np.array([results[k].accuracy(attribute) for k in rows]) * 100
        half_widths = np.nan_to_num(stats[:, 1])  # one seed: no interval to draw
        top.bar(x + (i - (len(PLOT_ATTRIBUTES) - 1) / 2) * width, stats[:, 0], width, yerr=half_widths, capsize=2,
                label=attribute)
    first = next(iter(rows.values()))
    top.set_ylabel("accuracy % (mean ± 95% CI)")
    top.set_ylim(0, 105)
    top.set_title(f"SynthBench held-out: {len(first['prompts'])} prompts × {len(first['seeds'])} seeds")
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    seconds = [d["seconds_per_video"] for d in rows.values()]
    bottom.bar(x, seconds, 0.6, color="grey")
    for xi, s in zip(x, seconds):
        bottom.annotate(f"{s:.3g}", (xi, s), ha="center", va="bottom", fontsize="small")
    bottom.set_yscale("log")
    threads = "/".join(str(t) for t in sorted({d["torch_threads"] for d in rows.values()}))
    bottom.set_ylabel(f"s/video (CPU, {threads} threads, log)")
    bottom.set_xticks(x, labels, rotation=20, ha="right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def assemble(cache: Path, prompts: list[str], seeds: list[int], out: Path, plot: Path | None) -> Path:
    rows, notes = load_cached_rows(cache, prompts, seeds)
    if not rows:
        raise AliceError(f"no rows cached in {cache} for {len(prompts)} prompts x seeds {seeds}; compute some with "
                         "--teacher BUNDLE_DIR --rows all (and --student MODE=RUN_DIR for the student rows)")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if plot is not None:
        write_atomic(plot, plot_png(rows))
    write_atomic(out, markdown(rows, notes, plot, out).encode())
    return out


# ---------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="teacher model bundle folder (model.json + teacher.safetensors)")
    parser.add_argument("--student", action="append", default=[], metavar="MODE=PATH",
                        help="MODE rcm|scm|dmd = a distillation run folder (checkpoint.pt) or a DiT .safetensors; repeat")
    parser.add_argument("--rows", help=f"rows to compute now: all, or comma-separated of {', '.join(ROW_BY_KEY)}; "
                                       "without it, only assemble the report from the cache")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out prompts (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cache", default="runs/rcm-ablation-cache", help="folder for per-row JSON and exported students")
    parser.add_argument("--out", default="docs/rcm-ablation.md")
    parser.add_argument("--plot", default="docs/rcm-ablation.png", help="PNG path; 'none' for no plot")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = parse_rows(args.rows)
        students = parse_students(args.student)
        seeds = parse_seeds(args.seeds)
        if args.limit is not None and args.limit < 1:
            raise AliceError(f"--limit must be at least 1, got {args.limit}")
        prompts = synthbench_prompts("heldout")[: args.limit]
        cache = Path(args.cache)
        if args.threads:
            torch.set_num_threads(args.threads)
        if rows:
            if not args.teacher:
                raise AliceError("--rows needs --teacher BUNDLE_DIR (the teacher's model bundle folder)")
            compute_rows(rows, args.teacher, students, prompts, seeds, cache)
        plot = None if args.plot.lower() == "none" else Path(args.plot)
        print(assemble(cache, prompts, seeds, Path(args.out), plot))
    except AliceError as exc:
        print(f"rcm_ablation: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
