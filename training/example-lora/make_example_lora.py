"""Makes the example LoRA shipped with the pack (alice_core/bundled/alice-tiny/loras/alice_example_lora.safetensors):
alice-tiny learns azure, a colour its training data never had, from a few rendered clips, with `alice finetune`.

    python training/example-lora/make_example_lora.py [--out FILE]
    python training/example-lora/make_example_lora.py --example-clips   # the finetune workflow's shipped clips

Renders the clips (mp4 + same-name .txt caption) into a temporary folder, runs the `alice finetune` command on them
and copies the student LoRA (the one the 4-step sampler uses) to the bundled location. README.md beside this file
records the run that made the shipped file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from alice_core.video_io import write_video  # noqa: E402
from alice_core.world import render_attribute_clips  # noqa: E402

TARGET = ROOT / "alice_core" / "bundled" / "alice-tiny" / "loras" / "alice_example_lora.safetensors"
EXAMPLE_CLIPS = ROOT / "alice_core" / "bundled" / "alice-tiny" / "example_clips"
SETTINGS = ["--rank", "4", "--alpha", "4", "--teacher-steps", "100", "--student-steps", "30", "--teacher-lr", "1e-3",
            "--batch-size", "4", "--seed", "0", "--threads", "1"]


def render_clips(folder: Path, count: int, seed: int, stem: str) -> list[str]:
    """`count` azure clips of alice-tiny's size as lossless mp4s with same-name .txt captions; their captions."""
    frames, captions = render_attribute_clips(np.random.default_rng(seed), count, size=32, frames=9, colour="azure")
    for i, (clip, text) in enumerate(zip(frames, captions)):
        write_video(clip, folder / f"{stem}{i:02}.mp4", fps=8, crf=0)
        (folder / f"{stem}{i:02}.txt").write_text(text + "\n")
    return captions


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--out", type=Path, default=TARGET)
    p.add_argument("--example-clips", action="store_true", help=f"write the 6 shipped example clips to {EXAMPLE_CLIPS}")
    args = p.parse_args()
    if args.example_clips:
        EXAMPLE_CLIPS.mkdir(parents=True, exist_ok=True)
        print(*render_clips(EXAMPLE_CLIPS, 6, seed=1, stem="azure_"), sep="\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="alice-example-lora-") as tmp:
        clips, work = Path(tmp) / "clips", Path(tmp) / "work"
        clips.mkdir()
        captions = render_clips(clips, args.clips, seed=0, stem="azure_")
        command = ["alice", "finetune", "--clips", str(clips), "-o", str(Path(tmp) / "lora.safetensors"),
                   "--work-dir", str(work), *SETTINGS]
        print("captions:", *captions, sep="\n  ")
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"trained in {time.perf_counter() - start:.0f} s")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "lora.safetensors", args.out)
    print(f"{args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
