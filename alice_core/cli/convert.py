"""`alice convert IN OUT --to diffusers|official|comfy-fp8` (the conversion itself: loading/convert.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import AliceError
from ..loading.convert import OUTPUT_DTYPES, TARGETS, convert_checkpoint
from ..models.config import WanDiTConfig

CONVERT_DESCRIPTION = ("rewrite any supported Wan DiT checkpoint in another layout, one tensor at a time "
                       "(a 14B model converts in a few GB of memory)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert a Wan DiT checkpoint (official, rCM, TurboDiffusion, diffusers, ComfyUI fp8) to another layout",
        description=CONVERT_DESCRIPTION,
    )
    p.add_argument("input", help="checkpoint file (.safetensors, .pt, .pth) or diffusers folder")
    p.add_argument("output", help="output .safetensors file (official, comfy-fp8) or folder (diffusers); never overwritten")
    p.add_argument("--to", required=True, choices=TARGETS, help="output layout")
    p.add_argument("--dtype", default="keep", choices=tuple(OUTPUT_DTYPES),
                   help="cast floating tensors (default: keep the stored dtype; dequantised int8/fp8 become bf16)")
    p.add_argument("--config", default=None, help="DiT config JSON, for files whose num_heads is not dim/128")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.config and not Path(args.config).is_file():
        raise AliceError(f"--config {args.config}: file not found; pass a DiT config JSON file")
    config = WanDiTConfig.from_json(args.config) if args.config else None
    result = convert_checkpoint(args.input, args.output, args.to, args.dtype, config)
    print(result.source.describe())
    print(f"wrote {result.path} ({args.to}, {result.tensors} tensors, {result.bytes / 1e9:.2f} GB)")
    return 0
