"""Alice's Wan DiT forward, VAE decode and VAE encode against diffusers' `WanTransformer3DModel` /
`AutoencoderKLWan` on the same random weights: time (interleaved runs, ratio per pair, in one process) and peak
memory (a fresh process per model and part, so each peak is its own). One table per part.

    python benchmarks/vs_diffusers.py [--part dit|vae|vae-encode|all] [--device cpu|cuda] [--dtype fp32|bf16]
                                      [--layers 2] [--latent 3x16x16] [--repeats 5] [--threads 2] [--clock wall|cpu]

CPU defaults: the Wan2.1 1.3B block shape (dim 1536, 12 heads, ffn 8960) at 2 blocks, a 3x16x16 latent; the VAE
at its real width decoding 2 latent frames of 16x16 (encoding the 5 frames of 128x128 they stand for). On a
shared CPU, `--threads 1 --clock cpu` times each run by the process's CPU time, which other people's jobs do not
inflate the way they inflate wall time. On a GPU: `--device cuda --dtype bf16 --layers 30
--latent 21x60x104` is the 1.3B at 480p x 81 frames; the table then adds the forward's FLOP count and the time at
the compute limit (790 TFLOP/s bf16). Goal: <= 0.9x diffusers' time and <= 1.0x its peak memory.
Peak memory is CUDA's max_memory_allocated on a GPU, the process's peak RSS growth during the part on the CPU (the
peak RSS reset after the warm-up run, so building the model does not count; glibc told to unmap freed blocks of
64 KiB or more, so the RSS follows the live tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from alice_core.loading.dit import build_dit  # noqa: E402
from alice_core.loading.vae import vae_diffusers_to_official  # noqa: E402
from alice_core.models.vae import WanVAE  # noqa: E402

TEXT_LEN = 512
PEAK_TFLOPS_BF16 = 790.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def diffusers_dit(layers: int, device: str = "cpu"):
    """diffusers' Wan2.1 1.3B-shaped DiT with `layers` blocks, its weights drawn on `device` (a GPU draws 1.3B
    weights in well under a second; the same seed gives the same weights on the same device)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(
            num_layers=layers, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096,
            in_channels=16, out_channels=16, freq_dim=256, patch_size=(1, 2, 2),
        )
    with torch.no_grad():
        for p in model.parameters():  # diffusers zero-inits some tables: random everywhere, as trained weights are
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 if p.ndim > 1 else 0.02 * torch.randn_like(p))
    return model.eval()


def diffusers_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def build(part: str, which: str, layers: int, device: str, dtype: torch.dtype):
    """The model of one part (dit, vae, vae-encode) and implementation, on `device` in `dtype`."""
    if part == "dit":
        ref = diffusers_dit(layers, device)
        model = ref if which == "diffusers" else build_dit(ref.state_dict())
        return model.to(device, dtype)
    ref = diffusers_vae()
    if which == "diffusers":
        return ref.to(device, dtype)
    ours = WanVAE()
    ours.load_state_dict(vae_diffusers_to_official(ref.state_dict()))
    return ours.eval().to(device, dtype)


def make_inputs(part: str, latent: tuple[int, int, int], device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    f, h, w = latent
    x = torch.randn(1, 16, f, h, w, generator=g).to(device, dtype)
    if part == "dit":
        return x, torch.tensor([900.0], device=device), torch.randn(1, TEXT_LEN, 4096, generator=g).to(device, dtype)
    if part == "vae-encode":  # the video these latents stand for: 1 + 4(f-1) frames, 8x the size
        return (torch.rand(1, 3, 1 + 4 * (f - 1), 8 * h, 8 * w, generator=g).to(device, dtype) * 2 - 1,)
    return (x,)


def latent_stats(model, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' VAE config's per-channel latent mean and std, shaped and placed to broadcast over `like`."""
    shape = (1, -1, 1, 1, 1)
    return tuple(torch.tensor(getattr(model.config, name)).view(shape).to(like) for name in ("latents_mean", "latents_std"))


def runner(part: str, which: str, model, inputs):
    """The timed call. Alice's VAE encodes to and decodes from the normalised latent, diffusers' the raw one: its
    decode gets the same latent de-normalised beforehand (not timed), its encode's result is normalised (two
    elementwise ops, as Alice's encode does them), so both compute, and return, the same thing."""
    if part == "dit" and which == "diffusers":
        x, t, ctx = inputs
        return lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    if part == "dit":
        return lambda: model(*inputs)
    if part == "vae-encode" and which == "diffusers":
        mean, std = latent_stats(model, inputs[0])
        return lambda: (model.encode(inputs[0], return_dict=False)[0].mode() - mean) / std
    if part == "vae-encode":
        return lambda: model.encode(inputs[0])
    if which == "diffusers":
        mean, std = latent_stats(model, inputs[0])
        raw = inputs[0] * std + mean
        return lambda: model.decode(raw, return_dict=False)[0]
    return lambda: model.decode(inputs[0])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_bytes(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def dit_tflop(layers: int, latent: tuple[int, int, int], dim: int = 1536, ffn: int = 8960) -> float:
    """Matmul FLOP of one DiT forward (2 per multiply-add): projections, attention scores and values, FFN."""
    f, h, w = latent
    tokens = f * (h // 2) * (w // 2)
    per_block = (
        2 * tokens * dim * dim * 4  # self-attention q, k, v, o
        + 2 * 2 * tokens * tokens * dim  # self-attention QK^T and PV
        + 2 * tokens * dim * dim * 2 + 2 * TEXT_LEN * dim * dim * 2  # cross-attention q, o and k, v
        + 2 * 2 * tokens * TEXT_LEN * dim  # cross-attention QK^T and PV
        + 2 * tokens * dim * ffn * 2  # FFN
    )
    return layers * per_block / 1e12


def peak_worker(args) -> None:
    """Fresh process: build one model, run once to warm up, then report the peak of a second run."""
    dtype, device = DTYPES[args.dtype], args.device
    model = build(args.part, args.worker, args.layers, device, dtype)
    run = runner(args.part, args.worker, model, make_inputs(args.part, args.latent, device, dtype))
    with torch.inference_mode():
        run()
        sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            # VmHWM is the process's lifetime peak, building the model included: reset it to the RSS of now
            Path("/proc/self/clear_refs").write_text("5")
            base = rss_bytes("VmRSS")
        run()
        sync(device)
        peak = torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else rss_bytes("VmHWM") - base
    print(json.dumps({"peak_bytes": peak}))


def peak_of(args, which: str) -> int:
    cmd = [sys.executable, __file__, "--worker", which, "--part", args.part, "--device", args.device,
           "--dtype", args.dtype, "--layers", str(args.layers), "--latent", "x".join(map(str, args.latent)),
           "--threads", str(args.threads), "--clock", args.clock]
    # glibc then maps every block of 64 KiB or more on its own and unmaps it when freed, so the RSS follows the
    # tensors alive (by default freed memory stays in the heap and a second run's peak would barely show)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def timed(part: str, args) -> tuple[dict[str, list[float]], float]:
    """Interleaved times of both implementations, and the largest |alice - diffusers| of their outputs."""
    dtype, device = DTYPES[args.dtype], args.device
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    runs = {}
    for which in ("alice", "diffusers"):
        model = build(part, which, args.layers, device, dtype)
        runs[which] = runner(part, which, model, make_inputs(part, args.latent, device, dtype))
    times: dict[str, list[float]] = {"alice": [], "diffusers": []}
    with torch.inference_mode():
        outputs = [run() for run in runs.values()]  # warm-up (kernels, caches)
        max_diff = (outputs[0].float() - outputs[1].float()).abs().max().item()
        del outputs
        for _ in range(args.repeats):
            for which, run in runs.items():  # interleaved: a drift in machine speed hits both
                sync(device)
                start = clock()
                run()
                sync(device)
                times[which].append(clock() - start)
    return times, max_diff


def measure(part: str, args) -> dict:
    """times (per implementation), ratios (alice / diffusers per interleaved pair), peaks (bytes, each measured in
    its own process), max_diff (largest |alice - diffusers| of the outputs)."""
    times, max_diff = timed(part, args)
    ratios = [a / d for a, d in zip(times["alice"], times["diffusers"])]
    peaks = {which: peak_of(argparse.Namespace(**{**vars(args), "part": part}), which) for which in times}
    return {"times": times, "ratios": ratios, "peaks": peaks, "max_diff": max_diff}


def table(part: str, args, result: dict | None = None) -> str:
    """The markdown table of one part (measured now unless `result`, from measure(), is given)."""
    result = result or measure(part, args)
    times, ratios, peaks = result["times"], result["ratios"], result["peaks"]
    what = {"dit": f"DiT forward, {args.layers} blocks at 1.3B width", "vae": "VAE decode (Wan2.1, full width)",
            "vae-encode": "VAE encode (Wan2.1, full width)"}[part]
    lines = [
        f"{what}, latent {'x'.join(map(str, args.latent))}, {args.dtype} on {args.device}, {args.threads} threads, "
        f"{args.repeats} interleaved runs, {args.clock} time",
        "",
        f"| | median {args.clock} s | min s | peak MiB |",
        "|---|---|---|---|",
    ]
    for which in ("alice", "diffusers"):
        lines.append(f"| {which} | {statistics.median(times[which]):.4f} | {min(times[which]):.4f} | {peaks[which] / 2**20:.1f} |")
    lines.append(f"| alice / diffusers | {statistics.median(ratios):.3f} (pairs {min(ratios):.3f}-{max(ratios):.3f}) | | "
                 f"{peaks['alice'] / max(peaks['diffusers'], 1):.3f} |")
    lines.append(f"\nLargest |alice - diffusers| of the outputs: {result['max_diff']:.3g}")
    if part == "dit":
        tflop = dit_tflop(args.layers, args.latent)
        best = min(times["alice"])
        lines.append(f"\n{tflop:.2f} TFLOP per forward: alice {tflop / best:.2f} TFLOP/s; at {PEAK_TFLOPS_BF16:g} "
                     f"TFLOP/s a forward takes {tflop / PEAK_TFLOPS_BF16:.4f} s, 4 steps {4 * tflop / PEAK_TFLOPS_BF16:.3f} s "
                     f"(alice: {4 * best:.3f} s, {best * PEAK_TFLOPS_BF16 / tflop:.1f}x the limit)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("dit", "vae", "vae-encode", "all"), default="all")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--latent", type=lambda s: tuple(int(v) for v in s.split("x")), default=None,
                   help="FxHxW latent size (default 3x16x16 for the DiT, 2x16x16 for the VAE)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the process's CPU time (with --threads 1, robust to other jobs on a shared machine)")
    p.add_argument("--worker", choices=("alice", "diffusers"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return peak_worker(args)
    for part in ("dit", "vae", "vae-encode") if args.part == "all" else (args.part,):
        part_args = argparse.Namespace(**{**vars(args), "latent": args.latent or ((3, 16, 16) if part == "dit" else (2, 16, 16))})
        print(table(part, part_args), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
