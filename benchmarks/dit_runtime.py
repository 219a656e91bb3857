"""DiT runtime options on random weights: eager vs torch.compile (per block), and block swap at several K —
forward time, and on a GPU the peak memory. One table.

    python benchmarks/dit_runtime.py [--device cpu|cuda] [--preset tiny|wan2.1-t2v-1.3b|wan2.1-t2v-14b]
                                     [--precision fp32|bf16|fp8_e4m3fn] [--latent 3x16x16] [--layers N]
                                     [--blocks all,20,10,5] [--compile] [--repeats 3] [--threads 2]

CPU now: `--preset tiny --compile` (6 blocks x 256 wide, alice-tiny's shape). On a GPU: `--device cuda --preset
wan2.1-t2v-1.3b --precision fp8_e4m3fn --latent 21x60x104 --blocks all,20,10,5` (and the 14B preset) gives peak
VRAM and step time per K. Times are the median of --repeats forwards after a warm-up (compile's first call is
reported apart: it is the compile).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from alice_core.loading.quant import build_empty_dit, fill_module  # noqa: E402
from alice_core.models.config import WanDiTConfig, dit_preset  # noqa: E402
from alice_core.models.runtime import DiTRuntime, prepare_dit  # noqa: E402

TINY = WanDiTConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=6, text_dim=384, text_len=32)


def random_dit(cfg: WanDiTConfig, precision: str):
    """A DiT of `cfg` with N(0, 1/fan_in) weights, quantised as `precision` says, in CPU memory."""
    model = build_empty_dit(cfg, precision)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("weight_scale")}
    g = torch.Generator().manual_seed(0)

    def tensor(shape):
        return lambda: torch.randn(shape, generator=g) * (shape[-1] ** -0.5 if len(shape) > 1 else 0.02)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(precision, torch.bfloat16)
    fill_module(model, ((k, tensor(s)) for k, s in shapes.items()), dtype, device="cpu", source="random")
    return model.eval()


def time_forward(model, inputs, device: str, repeats: int) -> tuple[float, float, float]:
    """(first call s, median s, peak GiB on CUDA else nan)."""
    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(*inputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        first = once()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = [once() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return first, statistics.median(times), peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--latent", type=lambda s: tuple(int(v) for v in s.split("x")), default=(3, 16, 16))
    p.add_argument("--layers", type=int, default=None, help="override the preset's block count")
    p.add_argument("--blocks", default="all", help="comma list of K for block swap ('all' = no swap)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile per block")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TINY if args.preset == "tiny" else dit_preset(args.preset)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    g = torch.Generator().manual_seed(1)
    compute = torch.float32 if args.precision == "fp32" else torch.bfloat16
    f, h, w = args.latent
    inputs = (torch.randn(1, cfg.in_dim, f, h, w, generator=g).to(args.device, compute),
              torch.tensor([900.0], device=args.device),
              torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(args.device, compute))
    runs = [(f"K={k}", DiTRuntime(blocks_on_device=None if k == "all" else int(k))) for k in args.blocks.split(",")]
    if args.compile:
        runs.append(("compile, all blocks", DiTRuntime(compile=True)))
    print(f"{args.preset} ({cfg.num_layers} blocks, dim {cfg.dim}), {args.precision}, latent {f}x{h}x{w}, "
          f"{args.device}, median of {args.repeats}\n")
    print("| run | first call s | forward s | vs K=all | peak GiB |\n|---|---|---|---|---|")
    baseline = None
    for name, runtime in runs:
        model = prepare_dit(random_dit(cfg, args.precision), args.device, runtime)
        first, median, peak = time_forward(model, inputs, args.device, args.repeats)
        baseline = baseline or median
        print(f"| {name} | {first:.3f} | {median:.3f} | {median / baseline:.2f} | {peak:.2f} |", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
