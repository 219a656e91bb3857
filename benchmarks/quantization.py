"""Precision modes on a random Wan2.1 1.3B checkpoint: weight bytes, peak memory while loading, and the output's
relative error against bf16 on a fixed input.

    python benchmarks/quantization.py [--checkpoint /tmp/alice-bench/wan2.1-1.3b-random-bf16.safetensors]
                                      [--modes bf16,fp8_e4m3fn,fp8_e5m2,nf4] [--threads 1]

The random bf16 checkpoint (official layout, ~2.8 GB) is written tensor by tensor on first use; keep it out of
the repository. Each mode loads in a fresh process, so its peak RSS (Linux VmHWM: interpreter, torch and the
model) is its own. Targets: fp8 <= 55% and NF4 <= 35% of bf16's weight bytes; fp8 peak RSS below the size of the
bf16 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch


from alice_core.loading.output import OutputTensor, write_safetensors
from alice_core.models.config import dit_preset
from alice_core.models.dit import WanDiT

DEFAULT_CHECKPOINT = Path("/tmp/alice-bench/wan2.1-1.3b-random-bf16.safetensors")
DEFAULT_MODES = "bf16,fp8_e4m3fn,fp8_e5m2,nf4"
PRESET = "wan2.1-t2v-1.3b"


def random_tensor(key: str, shape: tuple[int, ...], index: int) -> torch.Tensor:
    """Deterministic weights of realistic scale: Linear weights ~ N(0, 1/fan_in), small biases, norms near 1."""
    g = torch.Generator().manual_seed(index)
    if key.endswith("modulation"):
        return (torch.randn(shape, generator=g) / math.sqrt(shape[-1])).to(torch.bfloat16)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return (torch.randn(shape, generator=g) / math.sqrt(fan_in)).to(torch.bfloat16)
    if "norm" in key:
        return (1 + 0.1 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    return (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)


def write_random_checkpoint(path: Path) -> None:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(dit_preset(PRESET)).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = [
        OutputTensor(key, shape, torch.bfloat16, lambda key=key, shape=shape, i=i: random_tensor(key, shape, i))
        for i, (key, shape) in enumerate(shapes.items())
    ]
    write_safetensors(path, tensors, metadata={"alice_dit_config": json.dumps(dit_preset(PRESET).to_dict())})


def fixed_input() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One latent frame of 128x128 pixels (64 tokens), a mid-trajectory timestep, 32 text tokens."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(1, 16, 1, 16, 16, generator=g), torch.tensor([750.0]), torch.randn(1, 32, 4096, generator=g)


def peak_rss_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def current_rss_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def worker(checkpoint: Path, mode: str, output: Path) -> None:
    """Load `checkpoint` in `mode`, run the fixed input, save the output, print one JSON line."""
    from alice_core.loading.dit import load_dit
    from alice_core.loading.quant import weight_bytes

    rss_before = current_rss_bytes()
    start = time.perf_counter()
    model = load_dit(checkpoint, precision=mode)
    load_seconds = time.perf_counter() - start
    peak_after_load = peak_rss_bytes()
    x, t, ctx = fixed_input()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(x.to(model.dtype), t, ctx.to(model.dtype)).float()
    forward_seconds = time.perf_counter() - start
    torch.save(out, output)
    print(json.dumps({
        "mode": mode, "weight_bytes": weight_bytes(model), "peak_rss_load": peak_after_load,
        "rss_before_load": rss_before, "load_s": load_seconds, "forward_s": forward_seconds,
    }))


def run_mode(checkpoint: Path, mode: str, threads: int) -> tuple[dict, torch.Tensor]:
    output = checkpoint.with_name(f"output-{mode}.pt")
    cmd = [sys.executable, __file__, "--worker", mode, "--checkpoint", str(checkpoint), "--output", str(output),
           "--threads", str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return row, torch.load(output, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--modes", default=DEFAULT_MODES, help="comma-separated precisions; bf16 is the reference")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.checkpoint, args.worker, args.output)
        return
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads peak memory from /proc (Linux)")

    if not args.checkpoint.exists():
        print(f"writing a random {PRESET} checkpoint to {args.checkpoint} ...", file=sys.stderr)
        write_random_checkpoint(args.checkpoint)
    size = args.checkpoint.stat().st_size
    modes = [m for m in args.modes.split(",") if m]
    if "bf16" not in modes:
        modes.insert(0, "bf16")
    results = {}
    for mode in modes:
        print(f"{mode} ...", file=sys.stderr)
        results[mode] = run_mode(args.checkpoint, mode, args.threads)

    bf16_row, bf16_out = results["bf16"]
    print(f"checkpoint: {args.checkpoint} ({size / 1e9:.2f} GB, bf16, {PRESET}); torch threads: {args.threads}")
    print("| mode | weight bytes | vs bf16 | peak RSS during load | load growth | load s | forward s "
          "| rel. error vs bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, (row, out) in results.items():
        err = ((out - bf16_out).norm() / bf16_out.norm()).item()
        print(f"| {mode} | {row['weight_bytes'] / 1e9:.3f} GB | {row['weight_bytes'] / bf16_row['weight_bytes']:.1%} "
              f"| {row['peak_rss_load'] / 1e9:.2f} GB | {(row['peak_rss_load'] - row['rss_before_load']) / 1e9:.2f} GB "
              f"| {row['load_s']:.1f} | {row['forward_s']:.1f} | {err:.4f} |")
    checks = []
    for mode, limit in (("fp8_e4m3fn", 0.55), ("fp8_e5m2", 0.55), ("nf4", 0.35)):
        if mode in results:
            ratio = results[mode][0]["weight_bytes"] / bf16_row["weight_bytes"]
            checks.append(f"{mode} weight bytes {ratio:.1%} <= {limit:.0%}: {'PASS' if ratio <= limit else 'FAIL'}")
    for mode in ("fp8_e4m3fn", "fp8_e5m2"):
        if mode in results:
            peak = results[mode][0]["peak_rss_load"]
            checks.append(f"{mode} peak RSS {peak / 1e9:.2f} GB < checkpoint {size / 1e9:.2f} GB: "
                          f"{'PASS' if peak < size else 'FAIL'}")
    print("\n".join(checks))


if __name__ == "__main__":
    main()
