"""Start-up: `alice generate "a red ball bouncing"` with the bundled model as a whole process, beside the floor under
it (a bare `python -c "import torch"`, and the same with the garbage collector off and no interpreter teardown,
as `alice generate` now runs), the commands run in turn (A B C A B C ...) so that each round's differences
hold while a shared CPU's speed drifts.

    python -m benchmarks.startup [--runs 10] [--before DIR] [--out benchmarks/startup.md]

--before DIR: a checkout of another commit (`git worktree add --detach DIR COMMIT`), timed the same way as this one,
and its video compared byte for byte with this checkout's. Each checkout's modules are byte-compiled first (as an
installed package is). Wall time: start to reaped; CPU: the child's user + system time (os.wait4). One thread
(OMP_NUM_THREADS=1), as on the shared machine.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alice_core.loading.output import file_sha256, write_text

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red ball bouncing"


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(wall s, cpu s, peak MiB) of one whole process, run in `cwd` (`python -m` puts it first on sys.path: never a
    checkout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"


Runs = list[tuple[float, float, float]]


def measure(checkouts: dict[str, Path], runs: int, folder: Path) -> tuple[dict[str, Runs], set]:
    """Every command `runs` times in turn after one warm-up round; the sha256 of each checkout's videos."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"OMP_NUM_THREADS": "1"}
    bare = "import gc, os; gc.disable(); import torch; os._exit(0)"
    commands = {"floor: python -c 'import torch'": ([sys.executable, "-c", "import torch"], env),
                "floor without collector or teardown": ([sys.executable, "-c", bare], env)}
    for label, checkout in checkouts.items():
        compileall.compile_dir(checkout / "alice_core", quiet=1)
        generate = [sys.executable, "-m", "alice_core", "generate", PROMPT, "-o"]
        commands[label] = (generate, env | {"PYTHONPATH": str(checkout)})
    times: dict[str, Runs] = {label: [] for label in commands}
    digests = set()
    for round_ in range(runs + 1):
        for label, (cmd, cmd_env) in commands.items():
            out = [str(folder / f"{len(os.listdir(folder))}.mp4")] if cmd[-1] == "-o" else []
            result = _timed(cmd + out, cmd_env, folder)
            if out:
                digests.add(file_sha256(out[0]))
            if round_:  # the first round warms the page cache
                times[label].append(result)
    return times, digests


def _spread(values: tuple[float, ...]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def table(times: dict[str, Runs], commits: dict[str, str]) -> str:
    floor_label = next(iter(times))
    floor = times[floor_label]
    rows = ["| command | commit | wall s, median (min-max) | CPU s, median (min-max) | wall - floor, median "
            "of rounds | wall / floor, median of rounds | peak RSS MiB, median |", "|---|---|---|---|---|---|---|"]
    for label, runs in times.items():
        walls, cpus, peaks = zip(*runs)
        above = [w - f[0] for w, f in zip(walls, floor)]
        ratio = [w / f[0] for w, f in zip(walls, floor)]
        rows.append(f"| {label} | {commits.get(label, '')} | {_spread(walls)} | {_spread(cpus)} | "
                    f"{statistics.median(above):+.3f} | {statistics.median(ratio):.3f} | "
                    f"{statistics.median(peaks):.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the commit to compare with")
    parser.add_argument("--out", type=Path, default=None, help="write the table to this markdown file")
    args = parser.parse_args()
    checkouts = {"alice generate (before)": args.before} if args.before else {}
    checkouts["alice generate"] = ROOT
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        times, digests = measure(checkouts, args.runs, Path(folder))
    commits = {label: _commit(checkout) for label, checkout in checkouts.items()}
    text = (f"{args.runs} rounds on {os.cpu_count()} CPUs, load average {load:.1f} -> {os.getloadavg()[0]:.1f}; "
            f"videos of all runs identical: {'yes' if len(digests) == 1 else 'NO'}; `python -m benchmarks.startup "
            f"--runs {args.runs}{' --before DIR' if args.before else ''}`\n\n{table(times, commits)}\n")
    print(text)
    if args.out:
        write_text(args.out, text, replace=True)


if __name__ == "__main__":
    main()
