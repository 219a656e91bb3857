"""Wan2.2 A14B expert pairs: weight bytes per precision at full size (meta device, nothing allocated), and load
time / peak RSS of a reduced random pair on this CPU.

    python benchmarks/expert_pair_memory.py [--modes bf16,fp8_e4m3fn,nf4] [--folder /tmp/alice-bench/pair]

Full size: `planned_weight_bytes` of the wan2.2-i2v-a14b preset (the tests hold it to a loaded model's bytes).
Reduced: a random bf16 pair (dim 1024, 8 layers, in_dim 36) written once to --folder; each mode loads the pair in a
fresh process (peak RSS = Linux VmHWM, interpreter and torch included). Only the active expert has to fit on the
GPU: the other waits in CPU memory, so the GPU needs one expert's bytes and the host the pair's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from alice_core.models.config import WanDiTConfig, dit_preset  # noqa: E402

REDUCED = WanDiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=8, in_dim=36)
GIB = 2**30


def full_size_table(modes: list[str]) -> str:
    from alice_core.loading.dit import planned_weight_bytes

    config = dit_preset("wan2.2-i2v-a14b")
    rows = ["| precision | one expert (GPU) | the pair (host) |", "|---|---|---|"]
    for mode in modes:
        one = planned_weight_bytes(config, mode)
        rows.append(f"| {mode} | {one / GIB:.2f} GiB | {2 * one / GIB:.2f} GiB |")
    return "\n".join(rows)


def write_pair(folder: Path) -> tuple[Path, Path]:
    from benchmarks.quantization import random_tensor
    from alice_core.loading.output import OutputTensor, write_safetensors
    from alice_core.models.dit import WanDiT
    import torch

    paths = folder / "high.safetensors", folder / "low.safetensors"
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(REDUCED).state_dict().items()}
    for offset, path in enumerate(paths):
        tensors = [OutputTensor(k, s, torch.bfloat16, lambda k=k, s=s, i=i: random_tensor(k, s, i + 1000 * offset))
                   for i, (k, s) in enumerate(shapes.items())]
        write_safetensors(path, tensors, metadata={"alice_dit_config": json.dumps(REDUCED.to_dict())})
    return paths


def worker(high: str, low: str, mode: str) -> None:
    from benchmarks.quantization import peak_rss_bytes
    from alice_core.loading.experts import load_expert_pair
    from alice_core.loading.quant import weight_bytes

    start = time.perf_counter()
    pair = load_expert_pair(high, low, mode, boundary=0.9)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss_bytes(),
                      "weights": weight_bytes(pair.high) + weight_bytes(pair.low)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="bf16,fp8_e4m3fn,nf4")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/alice-bench/pair"))
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    modes = [m for m in args.modes.split(",") if m]
    print("Wan2.2 I2V-A14B at full size (weight bytes, meta device):\n" + full_size_table(modes) + "\n")
    high, low = write_pair(args.folder)
    rows = ["| precision | pair weights | load time | peak RSS |", "|---|---|---|---|"]
    for mode in modes:
        cmd = [sys.executable, __file__, "--worker", str(high), str(low), mode]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=Path(__file__).parents[1])
        if done.returncode:
            rows.append(f"| {mode} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(f"| {mode} | {r['weights'] / 2**20:.0f} MiB | {r['seconds']:.1f} s | {r['peak_rss'] / 2**20:.0f} MiB |")
    size = sum(p.stat().st_size for p in (high, low)) / 2**20
    print(f"Reduced pair (dim {REDUCED.dim}, {REDUCED.num_layers} layers; files {size:.0f} MiB bf16) on this CPU:")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
