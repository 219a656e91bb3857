"""Compare teacher recipe pilots at equal training wall time from their in-training metrics (metrics.csv).

    python benchmarks/teacher_pilots.py RUN [RUN ...] [--seconds T] [--out docs/table.md]

Each RUN is a teacher run folder (checkpoint.pt, metrics.csv). T defaults to the shortest run's training time, so
every run is read at about the same time: its evaluation nearest to T (evaluations come every --eval-every steps,
so the row's own training minutes are shown). The recipe column lists the config fields that
differ from the trainer's defaults. The whole curve of each run is in its metrics.csv.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import asdict
from pathlib import Path

from alice_core.train.state import load_checkpoint
from alice_core.train.teacher import TeacherTrainConfig

COLUMNS = ("step", "train_seconds", "loss", "direction", "wrong_label_motion", "persistence", "colour", "shape",
           "fragments", "background_rms", "x0_rmse_mid", "x0_rmse_high")
IGNORED = {"steps", "dit", "init_from", "checkpoint_every", "eval_every", "eval_steps", "eval_prompts"}


def recipe(run: Path) -> str:
    config = load_checkpoint(run / "checkpoint.pt")["config"]
    default = asdict(TeacherTrainConfig())
    changed = [f"{k}={v}" for k, v in config.items() if k not in IGNORED and default.get(k) != v]
    return ", ".join(changed) or "defaults"


def rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def row_at(run_rows: list[dict], seconds: float) -> dict:
    return min(run_rows, key=lambda r: abs(float(r["train_seconds"]) - seconds))


def _cell(row: dict, column: str) -> str:
    value = row.get(column, "")
    if value in ("", None):
        return "-"
    number = float(value)
    if column in ("step",):
        return str(int(number))
    if column == "train_seconds":
        return f"{number / 60:.1f}"
    if column in ("direction", "wrong_label_motion", "persistence", "colour", "shape"):
        return f"{100 * number:.0f}"
    return f"{number:.3f}" if column == "loss" else f"{number:.2f}"


def table(runs: list[Path], seconds: float | None = None) -> str:
    curves = {run: rows(run) for run in runs}
    if seconds is None:
        seconds = min(float(r[-1]["train_seconds"]) for r in curves.values())
    header = ["pilot", "recipe", "step", "train min", "loss", "direction %", "wrong-dir %", "persistence %",
              "colour %", "shape %", "fragments", "bg RMS", "x0 RMSE s=0.5", "x0 RMSE s>=0.85"]
    lines = [f"At {seconds / 60:.1f} training minutes (evaluations excluded):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, curve in curves.items():
        row = row_at(curve, seconds)
        lines.append("| " + " | ".join([run.name, recipe(run), *(_cell(row, c) for c in COLUMNS)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, default=None, help="training seconds to compare at")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = table(args.runs, args.seconds)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
