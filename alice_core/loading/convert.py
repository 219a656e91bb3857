"""`alice convert IN OUT --to diffusers|official|comfy-fp8`: rewrite any supported Wan DiT checkpoint in another
layout, one tensor at a time (a 14B model converts in a few GB of memory).

  official    one safetensors file in the official Wan naming (Conv3d patch embedding), Alice config in its header
  diffusers   a folder with config.json + diffusion_pytorch_model.safetensors that diffusers' WanTransformer3DModel loads
  comfy-fp8   ComfyUI's scaled fp8: every Linear weight in float8_e4m3fn with a float32 `.scale_weight`, a
              `scaled_fp8` marker, everything else as stored (or --dtype)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig
from .checkpoint import open_checkpoint
from .dit_keys import diffusers_key_from_official
from .formats import (
    CONFIG_METADATA_KEY,
    SCALED_FP8_MARKER,
    CheckpointFormat,
    TensorRecipe,
    detect_format,
    materialize,
    read_fp8_with_scale,
    stored_config,
)
from .output import OutputTensor, atomic_output, exists_message, write_safetensors
from .quant import quantize_fp8

TARGETS = ("diffusers", "official", "comfy-fp8")
OUTPUT_DTYPES: dict[str, torch.dtype | None] = {
    "keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
}
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
COMFY_FP8 = torch.float8_e4m3fn


@dataclass
class ConvertResult:
    path: Path
    source: CheckpointFormat
    tensors: int
    bytes: int


def _output_dtype(recipe: TensorRecipe, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None and (recipe.dtype.is_floating_point or recipe.dequantizes):
        return dtype
    # Dequantised weights (TurboDiffusion int8, scaled fp8) have no stored float dtype to keep: bf16 holds them.
    return torch.bfloat16 if recipe.dequantizes else recipe.dtype


def _plain_outputs(fmt: CheckpointFormat, order: list[str], read, dtype, rename) -> list[OutputTensor]:
    def maker(key: str, out_dtype: torch.dtype):
        return lambda: materialize(fmt.recipes[key], read).to(out_dtype)

    outputs = []
    for key in order:
        recipe = fmt.recipes[key]
        out_dtype = _output_dtype(recipe, dtype)
        outputs.append(OutputTensor(rename(key), recipe.shape, out_dtype, maker(key, out_dtype)))
    return outputs


def _comfy_fp8_outputs(fmt: CheckpointFormat, order: list[str], read, dtype) -> list[OutputTensor]:
    scales: dict[str, torch.Tensor] = {}  # each weight's scale, made with the weight and written right after it

    def weight_maker(key: str):
        def make() -> torch.Tensor:
            recipe = fmt.recipes[key]
            pair = read_fp8_with_scale(recipe, read, COMFY_FP8)  # already e4m3fn: keep the exact bytes
            q, scale = pair if pair is not None else quantize_fp8(materialize(recipe, read), COMFY_FP8)
            scales[key] = scale.float().reshape(())
            return q
        return make

    def other_maker(key: str, out_dtype: torch.dtype):
        return lambda: materialize(fmt.recipes[key], read).to(out_dtype)

    outputs = []
    for key in order:
        recipe = fmt.recipes[key]
        if key.endswith(".weight") and len(recipe.shape) == 2:  # every Linear weight (norms are 1-D, the patch conv 5-D)
            scale_key = key.removesuffix("weight") + "scale_weight"
            outputs.append(OutputTensor(key, recipe.shape, COMFY_FP8, weight_maker(key)))
            outputs.append(OutputTensor(scale_key, (), torch.float32, lambda k=key: scales.pop(k)))
        else:
            out_dtype = _output_dtype(recipe, dtype)
            outputs.append(OutputTensor(key, recipe.shape, out_dtype, other_maker(key, out_dtype)))
    outputs.append(OutputTensor(SCALED_FP8_MARKER, (0,), COMFY_FP8, lambda: torch.empty(0, dtype=COMFY_FP8)))
    return outputs


def diffusers_config(config: WanDiTConfig) -> dict:
    """config.json for diffusers' WanTransformer3DModel (with the image embedder for Wan2.1 I2V)."""
    d = {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_dim,
        "out_channels": config.out_dim,
        "text_dim": config.text_dim,
        "freq_dim": config.freq_dim,
        "ffn_dim": config.ffn_dim,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if config.qk_norm else None,
        "eps": config.eps,
        "image_dim": config.image_dim,
        "added_kv_proj_dim": config.dim if config.image_dim is not None else None,
        "rope_max_seq_len": 1024,
    }
    if config.text_len != 512:  # not a diffusers field (diffusers ignores it); Alice reads it back
        d["text_len"] = config.text_len
    return d


def convert_checkpoint(
    src: str | Path, dst: str | Path, to: str, dtype: str = "keep", config: WanDiTConfig | None = None
) -> ConvertResult:
    """Convert `src` (any supported layout) to `dst` in layout `to`; `dst` must not exist yet."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if to not in TARGETS:
        raise AliceError(f"unknown target layout {to!r}; use --to {' or '.join(TARGETS)}")
    if dtype not in OUTPUT_DTYPES:
        raise AliceError(f"unknown --dtype {dtype!r}; use one of {', '.join(OUTPUT_DTYPES)}")
    if os.path.lexists(dst):  # checked again, atomically, when the output is placed
        raise AliceError(exists_message(dst))
    if not dst.parent.is_dir():
        raise AliceError(f"output folder {dst.parent} does not exist; create it first")
    if to != "diffusers" and dst.suffix != ".safetensors":
        raise AliceError(f"{dst}: --to {to} writes a single .safetensors file; name the output *.safetensors")

    with open_checkpoint(src) as reader:
        fmt = detect_format(reader.infos, str(src), config or stored_config(src, reader.metadata))
        order = fmt.ordered_keys(reader.keys())
        out_dtype = OUTPUT_DTYPES[dtype]
        metadata = {CONFIG_METADATA_KEY: json.dumps(fmt.config.to_dict()), "alice_source_layout": fmt.layout}
        if to == "official":
            outputs = _plain_outputs(fmt, order, reader.read, out_dtype, rename=lambda k: k)
            written = write_safetensors(dst, outputs, metadata)
        elif to == "comfy-fp8":
            outputs = _comfy_fp8_outputs(fmt, order, reader.read, out_dtype)
            written = write_safetensors(dst, outputs, metadata)
        else:
            outputs = _plain_outputs(fmt, order, reader.read, out_dtype, rename=diffusers_key_from_official)
            written = _write_diffusers_folder(dst, fmt.config, outputs)
    size = sum(f.stat().st_size for f in written.rglob("*")) if written.is_dir() else written.stat().st_size
    return ConvertResult(dst, fmt, len(outputs), size)


def _write_diffusers_folder(dst: Path, config: WanDiTConfig, outputs: list[OutputTensor]) -> Path:
    """The folder appears complete or not at all, and never over an existing one (atomic_output)."""
    with atomic_output(dst, folder=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(diffusers_config(config), indent=2) + "\n")
        write_safetensors(tmp / DIFFUSERS_WEIGHTS, outputs)
    return dst
