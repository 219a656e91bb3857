"""Build a `WanDiT` from any supported checkpoint (file, diffusers folder, or an in-memory state dict), in any
precision, reading and converting (quantising) one tensor at a time."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from ..models.ops import StandardOps
from .checkpoint import open_checkpoint
from .fill import fill_module
from .output import save_tensors
from .formats import CONFIG_METADATA_KEY, convert_state_dict, detect_format, materialize, read_fp8_with_scale, stored_config
from .precision import FP8_PRECISIONS, check_precision, compute_dtype, precision_of_dtype
from .quant import NF4_BLOCKSIZE, is_quantized_linear, keep_full_precision, quantized_ops

__all__ = ["CONFIG_METADATA_KEY", "build_dit", "build_empty_dit", "load_dit", "planned_weight_bytes", "stream_dit", "write_dit"]


def build_empty_dit(config: WanDiTConfig, precision: str = "bf16", fast_fp8_matmul: bool = True) -> WanDiT:
    """A meta-device WanDiT for `precision`: the transformer blocks' Linears are quantised; the embeddings and the
    output head (2% of the weights, and the most precision-sensitive) stay in bf16."""
    ops = quantized_ops(precision, fast_fp8_matmul)
    with torch.device("meta"):
        model = WanDiT(config, ops)
    if ops is not StandardOps:
        outside_blocks = [n for n, m in model.named_modules() if is_quantized_linear(m) and not n.startswith("blocks.")]
        keep_full_precision(model, outside_blocks)
    return model


def stream_dit(
    path: str | Path,
    precision: str = "bf16",
    config: WanDiTConfig | None = None,
    device: torch.device | str = "cpu",
    fast_fp8_matmul: bool = True,
) -> WanDiT:
    """Load any supported Wan DiT checkpoint in `precision`, reading and converting one tensor at a time."""
    path = Path(path).expanduser()
    check_precision(precision)
    with open_checkpoint(path) as reader:
        fmt = detect_format(reader.infos, str(path), config or stored_config(path, reader.metadata))
        model = build_empty_dit(fmt.config, precision, fast_fp8_matmul)
        fp8_dtype = FP8_PRECISIONS.get(precision)

        def maker(key: str):
            recipe = fmt.recipes[key]

            def make():
                owner = model.get_submodule(key.rpartition(".")[0])
                if fp8_dtype is not None and key.endswith(".weight") and is_quantized_linear(owner):
                    pair = read_fp8_with_scale(recipe, reader.read, fp8_dtype)
                    if pair is not None:
                        return pair
                return materialize(recipe, reader.read)

            return make

        tensors = ((k, maker(k)) for k in fmt.ordered_keys(reader.keys()))
        fill_module(model, tensors, compute_dtype(precision), device, str(path))
    return model.eval().requires_grad_(False)


def build_dit(
    state: dict[str, torch.Tensor],
    config: WanDiTConfig | None = None,
    dtype: torch.dtype = torch.float32,
    source: str = "state dict",
    ops=None,
) -> WanDiT:
    """A WanDiT holding exactly `state` (any supported layout, see `formats.py`), cast to `dtype`."""
    official, fmt = convert_state_dict(state, config, source)
    with torch.device("meta"):
        model = WanDiT(fmt.config) if ops is None else WanDiT(fmt.config, ops)
    fill_module(model, ((k, lambda v=v: v) for k, v in official.items()), dtype, device=None, source=source)
    return model.eval().requires_grad_(False)


def load_dit(
    path: str | Path,
    config: WanDiTConfig | None = None,
    dtype: torch.dtype = torch.float32,
    precision: str | None = None,
    device: torch.device | str = "cpu",
) -> WanDiT:
    """Load a Wan DiT from an official / rCM / TurboDiffusion / diffusers / ComfyUI checkpoint or an Alice file.

    `precision` (fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2, nf4) overrides `dtype`. Tensors are read one at a time
    and converted (quantised) as they arrive, straight onto `device`.
    """
    path = Path(path).expanduser()
    try:
        return stream_dit(path, precision or precision_of_dtype(dtype), config, device)
    except AliceError as exc:
        msg = str(exc)
        raise AliceError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def write_dit(path: str | Path, state: dict[str, torch.Tensor], config: WanDiTConfig,
              metadata: dict[str, str] | None = None) -> Path:
    """An Alice DiT file: official-layout weights with the architecture in the header (never over an existing file)."""
    return save_tensors(path, state, {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), **(metadata or {})})


def planned_weight_bytes(config: WanDiTConfig, precision: str) -> int:
    """The bytes `weight_bytes` reports once a DiT of this architecture is loaded in `precision`, worked out on
    the meta device without allocating anything (for sizing the 14B experts of a pair on a small machine).

    Loading stores every tensor in the compute dtype except fp8 weights (1 byte) with their fp32 scales; NF4
    packs two weights per byte, and its double-quantised statistics add a byte per block of 64 weights and an
    fp32 per 256 blocks (bitsandbytes' layout); the tests hold the estimate to the loaded model's bytes."""
    element = torch.empty((), dtype=compute_dtype(precision)).element_size()
    model = build_empty_dit(config, "bf16" if precision == "nf4" else precision)
    total = 0
    for name, tensor in model.state_dict().items():
        n = tensor.numel()
        if precision == "nf4" and name.startswith("blocks.") and name.endswith(".weight") and tensor.ndim == 2:
            blocks = -(-n // NF4_BLOCKSIZE)
            # + per layer: the 16-value NF4 and 256-value absmax code tables (fp32) and ~170 bytes of packed state
            total += (n + 1) // 2 + blocks + 4 * -(-blocks // 256) + 4 * (16 + 256) + 170
        elif tensor.dtype in FP8_PRECISIONS.values() or name.endswith("weight_scale"):
            total += n * tensor.element_size()
        else:
            total += n * element
    return total
