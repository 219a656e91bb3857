"""DiT runtime options on random weights: eager vs torch.compile (per block), and block swap at several K —
forward time, and on a GPU the peak memory. One table.

    python benchmarks/dit_runtime.py [--device cpu|cuda] [--preset tiny|wan2.1-t2v-1.3b|wan2.1-t2v-14b]
                                     [--precision fp32|bf16|fp8_e4m3fn] [--latent 3x16x16] [--layers N]
                                     [--blocks all,20,10,5] [--compile] [--repeats 3] [--threads 2]

CPU now: `--preset tiny --compile` (6 blocks x 256 wide, alice-tiny's shape). On a GPU: `--device cuda --preset
wan2.1-t2v-1.3b --precision fp8_e4m3fn --latent 21x60x104 --blocks all,20,10,5` (and the 14B preset) gives peak
VRAM and step time per K. Times are the median of --repeats forwards after a warm-up (compile's first call is
reported apart: it is the compile). One model serves every run, prepared anew for each.
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

from alice_core.loading.dit import build_empty_dit  # noqa: E402
from alice_core.loading.fill import fill_module  # noqa: E402
from alice_core.models.config import WanDiTConfig, dit_preset  # noqa: E402
from alice_core.models.runtime import DiTRuntime, prepare_dit  # noqa: E402

TINY = WanDiTConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=6, text_dim=384, text_len=32)


def random_dit(cfg: WanDiTConfig, precision: str, device: str = "cpu"):
    """A DiT of `cfg` with N(0, 1/fan_in) weights, drawn and quantised (as `precision` says) on `device`: a GPU
    draws a 14B model in seconds."""
    model = build_empty_dit(cfg, precision)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("weight_scale")}
    g = torch.Generator(device=device).manual_seed(0)

    def tensor(shape):
        scale = shape[-1] ** -0.5 if len(shape) > 1 else 0.02
        return lambda: torch.randn(shape, generator=g, device=device) * scale

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(precision, torch.bfloat16)
    fill_module(model, ((k, tensor(s)) for k, s in shapes.items()), dtype, device=device, source="random")
    return model.eval()


def random_inputs(cfg: WanDiTConfig, precision: str, latent: tuple[int, int, int], device: str) -> tuple:
    """(latent, timestep, text) for one forward at a latent of FxHxW."""
    g = torch.Generator().manual_seed(1)
    compute = torch.float32 if precision == "fp32" else torch.bfloat16
    return (torch.randn(1, cfg.in_dim, *latent, generator=g).to(device, compute),
            torch.tensor([900.0], device=device),
            torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(device, compute))


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(model, inputs, device: str, repeats: int) -> tuple[float, float, float, torch.Tensor]:
    """(first call s, median s, peak GiB on CUDA else nan, the last output)."""
    out = None

    def once() -> float:
        nonlocal out
        sync(device)
        start = time.perf_counter()
        out = model(*inputs)
        sync(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        first = once()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = [once() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return first, statistics.median(times), peak, out


class ResidentCounter:
    """Before each block's forward, counts the blocks whose weights are not block swap's CPU masters (every block
    when nothing is swapped); `peak` is the most seen at once. Read from the parameters, not BlockSwap's own count."""

    def __init__(self, model) -> None:
        self.model, self.peak = model, 0
        self.hooks = [b.register_forward_pre_hook(lambda m, a: self._count()) for b in model.blocks]

    def _count(self) -> None:
        swap = getattr(self.model, "block_swap", None)
        masters = {t.data_ptr() for ts in swap.masters.values() for t in ts} if swap else set()
        on_device = sum(any(p.data_ptr() not in masters for p in b.parameters()) for b in self.model.blocks)
        self.peak = max(self.peak, on_device)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def measure_runs(model, inputs, device: str, runs: list[tuple[str, DiTRuntime]], repeats: int) -> list[dict]:
    """Prepare the one model for each runtime in turn (compile last: it stays) and time its forward. Per run:
    name, first_s, median_s, vs_first (time ratio), peak_gib, resident (most blocks on the device at once,
    counted), max_diff (largest |output - the first run's output|)."""
    rows, reference = [], None
    for name, runtime in runs:
        prepare_dit(model, device, runtime)
        counter = ResidentCounter(model)
        first, median, peak, out = time_forward(model, inputs, device, repeats)
        counter.remove()
        reference = out if reference is None else reference
        rows.append({"name": name, "first_s": first, "median_s": median,
                     "vs_first": median / rows[0]["median_s"] if rows else 1.0, "peak_gib": peak,
                     "resident": counter.peak, "max_diff": (out.float() - reference.float()).abs().max().item()})
        del out
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| run | first call s | forward s | vs first run | peak GiB | blocks on device at once (counted) | "
             "max abs diff vs first run |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['first_s']:.3f} | {r['median_s']:.3f} | {r['vs_first']:.2f} | {r['peak_gib']:.2f} "
              f"| {r['resident']} | {r['max_diff']:.3g} |" for r in rows]
    return "\n".join(lines)


def runtimes(blocks: str, compile: bool = False) -> list[tuple[str, DiTRuntime]]:
    """'all,20,10,5' -> block swap runs (all: no swap), then torch.compile of every block when asked."""
    runs = [(f"K={k}", DiTRuntime(blocks_on_device=None if k == "all" else int(k))) for k in blocks.split(",")]
    return runs + ([("compile, all blocks", DiTRuntime(compile=True))] if compile else [])


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
    model = random_dit(cfg, args.precision, args.device)
    inputs = random_inputs(cfg, args.precision, args.latent, args.device)
    print(f"{args.preset} ({cfg.num_layers} blocks, dim {cfg.dim}), {args.precision}, latent "
          f"{'x'.join(map(str, args.latent))}, {args.device}, median of {args.repeats}\n")
    print(format_rows(measure_runs(model, inputs, args.device, runtimes(args.blocks, args.compile), args.repeats)))


if __name__ == "__main__":
    main()
