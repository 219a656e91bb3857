"""Filling a meta-device model one tensor at a time: quantised Linears quantise each weight as it arrives, so a
quantised load never holds a full-precision copy of the model (used by the DiT and umT5 loaders)."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import AliceError
from .guards import check_finite
from .precision import FP8_PRECISIONS
from .quant import is_quantized_linear


def _load_libc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None


_MALLOC_TRIM = _load_libc_malloc_trim()


def _return_freed_memory() -> None:
    """Quantising a weight frees float temporaries several times its size; glibc keeps freed blocks in per-thread
    heaps, which measured up to 2.5 GB of dead memory after an NF4 load of the 1.3B model. Trimming after each
    weight keeps the process at the size of what it holds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def fill_module(
    model: nn.Module,
    tensors: Iterable[tuple[str, Callable[[], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]]],
    dtype: torch.dtype,
    device: torch.device | str | None = "cpu",
    source: str = "checkpoint",
) -> None:
    """Fill a meta-device model one tensor at a time: `tensors` yields (state-dict key, make) pairs and `make()`
    returns the tensor (or, for a quantised Linear's weight, possibly an (fp8 weight, scale) pair). Quantised
    Linears quantise their weight on arrival; every other floating tensor is cast to `dtype`. Tensors move to
    `device` (None: they stay where they are)."""
    for key, make in tensors:
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        value = make()
        for part in value if isinstance(value, tuple) else (value,):
            if part.dtype not in FP8_PRECISIONS.values():  # fp8 has no isfinite; its scale is checked
                check_finite(key, part, source)
        if attr == "weight" and is_quantized_linear(module):
            weight, scale = value if isinstance(value, tuple) else (value, None)
            target = weight.device if device is None else torch.device(device)
            module.set_weight(weight.to(target), None if scale is None else scale.to(target))
            _return_freed_memory()
            continue
        tensor = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        elif attr in module._buffers:
            module._buffers[attr] = tensor
        else:
            raise AliceError(f"{source}: {key} is not a parameter of the model")
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:
        raise AliceError(f"{source}: checkpoint is missing {len(missing)} tensors (e.g. {missing[:3]})")
