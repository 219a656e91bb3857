"""Helpers for the hardening tests: run the installed `alice` command, check its one-line errors, measure the peak
memory and time of a call, and craft hostile files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
ALICE = Path(sys.executable).with_name("alice")


def run_alice(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
              input: str | None = None) -> subprocess.CompletedProcess:
    """The installed console script, importing this checkout (PYTHONPATH), offline, stdin closed unless given."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([str(ALICE), *args], capture_output=True, text=True, cwd=cwd, env=full_env,
                          timeout=timeout, input=input if input is not None else "", errors="replace")


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, exactly one `alice: error:` line, holding each of `words` (case-insensitive)."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("alice: error:")]
    assert len(lines) == 1, err[-2000:]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def peak_rss_growth(fn) -> tuple[object, int, float]:
    """(fn's result or exception, peak resident memory added while it ran in bytes, seconds). Resets the kernel's
    high-water mark first (Linux /proc/self/clear_refs), so the peak is this call's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _vm("VmRSS")
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # the refusal is the expected outcome
        result = exc
    seconds = time.perf_counter() - start
    return result, _vm("VmHWM") - before, seconds


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def write_safetensors_header(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path
