"""The one precision table: every name a user can pass (`--precision`, a node's or the app's precision input), what
it stores and computes in, and the one validator.

fp32 / bf16 / fp16 keep every tensor in that dtype. fp8_e4m3fn / fp8_e5m2 store Linear weights in fp8 with a
per-tensor scale and nf4 as bitsandbytes NF4; those three compute (and keep everything else, the VAE included) in
bf16. "auto" is for hosts that pick per device: fp32 on the CPU (fast there, and exact), bf16 on GPUs that have it,
else fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AliceError

QUANTIZED_COMPUTE_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Precision:
    name: str
    compute_dtype: torch.dtype
    linear_storage: str  # "full" (compute dtype), "fp8" or "nf4"
    fp8_dtype: torch.dtype | None = None

    @property
    def quantized(self) -> bool:
        return self.linear_storage != "full"


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", torch.float32, "full"),
    Precision("bf16", torch.bfloat16, "full"),
    Precision("fp16", torch.float16, "full"),
    Precision("fp8_e4m3fn", QUANTIZED_COMPUTE_DTYPE, "fp8", torch.float8_e4m3fn),
    Precision("fp8_e5m2", QUANTIZED_COMPUTE_DTYPE, "fp8", torch.float8_e5m2),
    Precision("nf4", QUANTIZED_COMPUTE_DTYPE, "nf4"),
)}
PRECISION_NAMES: tuple[str, ...] = tuple(PRECISIONS)
AUTO = "auto"
HOST_PRECISION_NAMES: tuple[str, ...] = (AUTO, *PRECISION_NAMES)  # for hosts that choose per device
FULL_PRECISIONS: dict[str, torch.dtype] = {n: p.compute_dtype for n, p in PRECISIONS.items() if not p.quantized}
FP8_PRECISIONS: dict[str, torch.dtype] = {n: p.fp8_dtype for n, p in PRECISIONS.items() if p.fp8_dtype is not None}


def check_precision(precision: str, allow_auto: bool = False) -> str:
    """`precision` when it is a known name, else an error listing the names."""
    names = HOST_PRECISION_NAMES if allow_auto else PRECISION_NAMES
    if precision not in names:
        raise AliceError(f"unknown precision {precision!r}; use one of {', '.join(names)}")
    return precision


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """A precision name with "auto" replaced by what suits `device`."""
    if check_precision(precision, allow_auto=True) != AUTO:
        return precision
    device = torch.device(device)
    if device.type == "cpu":
        return "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def is_quantized(precision: str) -> bool:
    return PRECISIONS[check_precision(precision)].quantized


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype activations and non-quantised tensors use in this mode."""
    return PRECISIONS[check_precision(precision)].compute_dtype


def precision_of_dtype(dtype: torch.dtype) -> str:
    for name, d in FULL_PRECISIONS.items():
        if d == dtype:
            return name
    raise AliceError(f"unsupported model dtype {dtype}; use one of {', '.join(FULL_PRECISIONS)}")
