"""Interrupted writes: a killed run takes its ffmpeg with it, and the next run removes the temp files it left,
never those of a writer still at work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alice_core.loading.leftovers import holding, remove_stale
from alice_core.video_io import read_video, write_video

ROOT = Path(__file__).parents[1]
SLOW_ENCODE = """
import numpy as np, sys
from alice_core.video_io import write_video
frames = np.random.default_rng(0).integers(0, 256, (120, 720, 1280, 3), dtype=np.uint8)
write_video(frames, sys.argv[1], fps=24)
"""


def _encoders(pid: int) -> list[int]:
    """Child processes of `pid` that are ffmpeg encoding raw frames (not a short `ffmpeg -version` probe)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    found = []
    for child in children:
        try:
            if b"rawvideo" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except FileNotFoundError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _age(path: Path, seconds: float = 120) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_writer_takes_ffmpeg_along_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "clip.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", SLOW_ENCODE, str(out)], env=env)
    deadline = time.monotonic() + 240
    while not (ffmpeg := _encoders(writer.pid)) and time.monotonic() < deadline:
        assert writer.poll() is None, "the writer ended before ffmpeg started"
        time.sleep(0.05)
    assert ffmpeg, "ffmpeg never started"
    time.sleep(1.0)  # ffmpeg is encoding, with dozens of frames in its lookahead
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    # Orphaned, ffmpeg would read EOF and go on encoding its buffered 720p frames for seconds.
    deadline = time.monotonic() + 1.5
    while _alive(ffmpeg[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(ffmpeg[0]):
        os.kill(ffmpeg[0], signal.SIGKILL)
        pytest.fail("ffmpeg outlived the run that started it")
    leftovers = list(tmp_path.glob(".clip.*.tmp.mp4"))
    assert len(leftovers) == 1 and not out.exists()

    _age(leftovers[0])
    write_video(np.zeros((5, 16, 16, 3), np.uint8), out, fps=8)  # the next run to the same name
    assert read_video(out)[0].shape == (5, 16, 16, 3)
    assert list(tmp_path.glob(".clip.*")) == []


def test_a_live_writers_temp_is_kept(tmp_path):
    live, dead, young = tmp_path / ".a.mp4.1.tmp", tmp_path / ".a.mp4.2.tmp", tmp_path / ".a.mp4.3.tmp"
    for p in (live, dead, young):
        p.write_bytes(b"partial")
    _age(live)
    _age(dead)
    with holding(live):
        assert remove_stale(tmp_path, ".a.mp4.*.tmp") == [dead]
    assert live.exists() and young.exists() and not dead.exists()


def test_convert_removes_a_killed_conversions_temp_file_and_folder(tmp_path):
    from alice_core.loading.convert import convert_checkpoint
    from tests.test_formats import random_state, write_variant

    src, _ = write_variant(random_state(), "official", tmp_path / "src")
    stale_file = tmp_path / ".out.safetensors.99999.tmp"
    stale_file.write_bytes(b"\0" * 100)
    stale_dir = tmp_path / ".out_diffusers.99999.tmp"
    stale_dir.mkdir()
    (stale_dir / "config.json").write_text("{}")
    for p in (stale_file, stale_dir):
        _age(p)
    convert_checkpoint(src, tmp_path / "out.safetensors", "official")
    convert_checkpoint(src, tmp_path / "out_diffusers", "diffusers")
    assert not stale_file.exists() and not stale_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "out_diffusers", "src"]
