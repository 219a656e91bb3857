"""Cost of one live preview at 480p (Wan2.1 latent 16 x 21 x 60 x 104): the linear latent->RGB map plus the PIL
image ComfyUI receives, against the 1.3B DiT's step time at the compute limit (283 TFLOP at 790 TFLOP/s bf16).

    python benchmarks/preview_cost.py [--device cpu|cuda] [--repeats 20]

Goal: < 5% of a step. On a GPU, compare with the measured step time of benchmarks/vs_diffusers.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from alice_core.preview import LatentRGB  # noqa: E402

STEP_AT_LIMIT_S = 283 / 790  # one 1.3B 480p x 81-frame DiT forward at the bf16 compute limit
LATENT_480P = (21, 60, 104)


def preview_seconds(device: str, repeats: int, latent: tuple[int, int, int] = LATENT_480P) -> float:
    """Median time of one preview (linear map + PIL image) of a Wan2.1 latent of FxHxW on `device`."""
    g = torch.Generator().manual_seed(0)
    previewer = LatentRGB(torch.randn(16, 3, generator=g) * 0.1, torch.zeros(3))
    x0 = torch.randn(1, 16, *latent, generator=g).to(device)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        Image.fromarray(previewer(x0))  # the image's bytes are on the CPU: the device's work is done here
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def table(device: str, repeats: int, step_s: float = STEP_AT_LIMIT_S, step: str = "a step at the compute limit",
          latent: tuple[int, int, int] = LATENT_480P) -> str:
    median = preview_seconds(device, repeats, latent)
    what = "480p, Wan2.1 latent" if latent == LATENT_480P else f"Wan2.1 latent {'x'.join(map(str, latent))}"
    return (f"| preview ({what}) | s | share of {step} |\n|---|---|---|\n"
            f"| linear map + PIL image, {device} | {median:.5f} | {100 * median / step_s:.2f}% of {step_s:.3f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print(table(args.device, args.repeats))


if __name__ == "__main__":
    main()
