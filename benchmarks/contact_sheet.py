"""Contact sheet of alice-tiny: for six held-out SynthBench prompts, the rendered truth (the procedural world's clip
for the prompt's attributes), the teacher (50 steps + CFG) and the 4-step rCM student, every frame, as one PNG.

    python benchmarks/contact_sheet.py [--model alice-tiny] [--out docs/alice-tiny-contact-sheet.png]
"""

from __future__ import annotations

import argparse
import io
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alice_core.generation import GenerationSettings  # noqa: E402
from alice_core.loading.output import atomic_output  # noqa: E402
from alice_core.pipeline import load_pipeline  # noqa: E402
from alice_core.world import parse_prompt, render_clip, sample_clip_spec, synthbench_prompts  # noqa: E402

SCALE = 3
LABEL_W = 300


def sheet_prompts() -> list[str]:
    """One held-out prompt per motion (right, left, up, down, bounce) plus one more straight one, distinct colours."""
    chosen, motions, colours = [], [], set()
    for prompt in synthbench_prompts("heldout"):
        a = parse_prompt(prompt)
        if a.colour in colours or (a.motion in motions and len(motions) < 5):
            continue
        chosen.append(prompt)
        motions.append(a.motion)
        colours.add(a.colour)
        if len(chosen) == 6:
            break
    return chosen


def truth(prompt: str, size: int, frames: int) -> np.ndarray:
    a = parse_prompt(prompt)
    rng = np.random.default_rng(zlib.crc32(prompt.encode()))
    return render_clip(sample_clip_spec(rng, size, frames, colour=a.colour, shape=a.shape, motion=a.motion))


def strip(clip: np.ndarray, label: str) -> Image.Image:
    frames, h, w, _ = clip.shape
    row = Image.new("RGB", (LABEL_W + frames * (w * SCALE + 4), h * SCALE + 4), (255, 255, 255))
    for i, frame in enumerate(clip):
        row.paste(Image.fromarray(frame).resize((w * SCALE, h * SCALE), Image.NEAREST), (LABEL_W + i * (w * SCALE + 4), 2))
    ImageDraw.Draw(row).text((6, h * SCALE // 2 - 6), label, fill=(0, 0, 0))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alice-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/alice-tiny-contact-sheet.png"))
    args = p.parse_args()
    pipe = load_pipeline(args.model)
    rows = []
    for prompt in sheet_prompts():
        student = pipe.generate(GenerationSettings(prompt, seed=args.seed, sampler="rcm", steps=4)).frames
        teacher = pipe.generate(GenerationSettings(prompt, seed=args.seed, sampler="teacher")).frames
        rows += [strip(truth(prompt, student.shape[2], student.shape[0]), f"truth: {prompt}"),
                 strip(teacher, "teacher, 50 steps + CFG 3"), strip(student, "student, 4 rCM steps")]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows) + 6 * len(rows) // 3), (255, 255, 255))
    y = 0
    for i, row in enumerate(rows):
        sheet.paste(row, (0, y))
        y += row.height + (6 if i % 3 == 2 else 0)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    with atomic_output(args.out, replace=True) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
