"""Memory and step time of `alice finetune` at a real model size with random weights (the GPU check of the finetune).

Builds a throw-away bundle whose two DiTs have the Wan2.1 1.3B shape (random weights: this measures cost, not
quality), writes a few random clips, and runs `alice_core.train.finetune.finetune` for a few steps of each stage,
reporting the memory estimate the finetune checks against, the measured peak (CUDA max allocated, or the process's
peak RSS on the CPU) and seconds per step. Two deviations from the real model, both small: text states are MiniLM's
384-d (the 1.3B's text input layer is 4096-d: 2% of its weights), and the latent is space-to-depth with 8x8x4 blocks
(768 channels; Wan's VAE gives 16) so the token grid matches Wan's 8x spatial / 4x temporal compression without a VAE.

    python benchmarks/finetune_memory.py --preset wan2.1-t2v-1.3b --size 480x832 --frames 17   # on a GPU
    python benchmarks/finetune_memory.py --preset tiny --size 32x32 --frames 9                 # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


from alice_core.bundle import ModelBundle, ModelDefaults
from alice_core.loading.dit import CONFIG_METADATA_KEY
from alice_core.models.config import WanDiTConfig, dit_preset
from alice_core.models.dit import WanDiT
from alice_core.train import finetune as ft

BLOCK = 8  # space-to-depth spatial stride: Wan's VAE compresses 8x in space


def dit_config(preset: str) -> WanDiTConfig:
    channels = 3 * BLOCK * BLOCK * 4
    base = WanDiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2) if preset == "tiny" else dit_preset(preset)
    return WanDiTConfig(**{**base.to_dict(), "in_dim": channels, "out_dim": channels, "text_dim": 384, "text_len": 32})


def random_bundle(folder: Path, cfg: WanDiTConfig, size: tuple[int, int], frames: int) -> tuple[ModelBundle, int]:
    """The bundle and its DiT's parameter count."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    dit = WanDiT(cfg).init_weights()
    params = sum(p.numel() for p in dit.parameters())
    path = folder / "dit.safetensors"  # teacher and student share the random weights: only the cost is measured
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in dit.state_dict().items()}, str(path),
              metadata={CONFIG_METADATA_KEY: json.dumps(cfg.to_dict())})
    del dit
    bundle = ModelBundle(
        name="random-finetune-bench", folder=folder, dits={"rcm": path, "teacher": path},
        autoencoder={"type": "space_to_depth", "spatial_stride": BLOCK, "temporal_stride": 4, "mean": 0.0, "std": 0.5},
        text_encoder="minilm", defaults=ModelDefaults(width=size[1], height=size[0], frames=frames, shift=5.0),
    )
    bundle.write()
    return bundle, params


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help="a DiT preset name, or 'tiny' for a CPU smoke run")
    p.add_argument("--size", default="480x832", help="HxW of the clips")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=3, help="steps of each stage")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    cfg = dit_config(args.preset)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    work = Path(tempfile.mkdtemp(prefix="alice-finetune-mem-"))
    try:
        bundle, params = random_bundle(work / "bundle", cfg, (height, width), args.frames)
        rng = np.random.default_rng(0)
        clips = [ft.TrainingClip(rng.integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8), "a test clip")
                 for _ in range(2)]
        run_cfg = ft.FinetuneConfig(rank=args.rank, alpha=args.rank, teacher_steps=args.steps, student_steps=args.steps,
                                    batch_size=args.batch_size, tangent_warmup=0, checkpoint_every=10**6)
        tokens = ((args.frames - 1) // 4 + 1) * (height // BLOCK // 2) * (width // BLOCK // 2)  # (1, 2, 2) patches
        estimate = ft.estimate_memory(cfg, run_cfg, tokens, params)
        stamps: dict[str, list[float]] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ft.finetune(bundle.folder, clips, run_cfg, work / "out.safetensors", work / "run", device=str(device),
                    progress=lambda stage, step, total, loss: stamps.setdefault(stage, []).append(time.perf_counter()))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gib = 1024**3
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"finetune at {args.preset} ({cfg.num_layers} blocks x {cfg.dim}), clips {height}x{width}x{args.frames} "
          f"({tokens} tokens), batch {args.batch_size}, rank {args.rank}, on {name}\n")
    print("| quantity | value |\n|---|---|")
    print(f"| estimated peak (weights / adapters / activations) | {sum(estimate.values()) / gib:.1f} GiB "
          f"({' / '.join(f'{v / gib:.1f}' for v in estimate.values())}) |")
    print(f"| measured peak ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'}) | {peak / gib:.1f} GiB |")
    for stage, times in stamps.items():
        per_step = np.diff(times).mean() if len(times) > 1 else float("nan")  # the first step includes warm-up
        print(f"| {stage} stage, s/step | {per_step:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
