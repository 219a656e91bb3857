"""Attention kernels for the DiT: PyTorch SDPA (default), flash-attn and SageAttention when importable.

The DiT takes an `Attention backend` object (like its `ops` namespace) and calls it with [B, L, heads, head_dim]
tensors. A backend that cannot be imported, or that fails on its first call (no GPU, a dtype it does not take),
falls back to SDPA with one logged line and never stops a generation. `math_attention()` switches every backend to
explicit softmax(QK^T)V, which forward-mode AD (rCM's exact JVP) needs: the fused kernels have no JVP.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import AliceError

logger = logging.getLogger(__name__)

# kernel(q, k, v) -> out, all [B, L, heads, head_dim]
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

ATTENTION_BACKENDS = ("sdpa", "flash", "sage")
DEFAULT_ATTENTION = "sdpa"

_MATH_ATTENTION = False


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Use explicit softmax(QK^T)V attention inside this block, whatever backend a model was given."""
    global _MATH_ATTENTION
    previous, _MATH_ATTENTION = _MATH_ATTENTION, True
    try:
        yield
    finally:
        _MATH_ATTENTION = previous


def math_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    weights = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    return (weights @ v).transpose(1, 2)


def sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _flash_kernel() -> Kernel:
    from flash_attn import flash_attn_func  # takes [B, L, heads, head_dim], fp16/bf16 on CUDA

    return lambda q, k, v: flash_attn_func(q, k, v)


def _sage_kernel() -> Kernel:
    from sageattention import sageattn  # "NHD" is the [B, L, heads, head_dim] layout

    return lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


_KERNEL_FACTORIES: dict[str, Callable[[], Kernel]] = {
    "sdpa": lambda: sdpa_kernel,
    "flash": _flash_kernel,
    "sage": _sage_kernel,
}


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class AttentionBackend:
    """The attention kernel one model uses. `name` is what runs now: the requested backend or, after a fallback,
    'sdpa'. A failing kernel is dropped on its first failure, so later calls do not retry (and re-log) it."""

    def __init__(self, requested: str = DEFAULT_ATTENTION, kernel: Kernel | None = None) -> None:
        if requested not in _KERNEL_FACTORIES and kernel is None:
            raise AliceError(f"unknown attention backend {requested!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
        self.requested = requested
        self.name, self.kernel = requested, kernel
        if kernel is None:
            try:
                self.kernel = _KERNEL_FACTORIES[requested]()
            except ImportError as e:
                self._fall_back(f"is not installed ({e.name or e})")
            except Exception as e:  # installed but broken (built for another torch / Triton / CUDA)
                self._fall_back(f"could not be loaded ({_first_line(e)})")

    def _fall_back(self, reason: str) -> None:
        logger.warning("attention backend '%s' %s; using sdpa", self.requested, reason)
        self.name, self.kernel = "sdpa", sdpa_kernel

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[B, L, heads, head_dim] q, k, v -> [B, L, heads * head_dim]."""
        if _MATH_ATTENTION:
            return math_kernel(q, k, v).flatten(2)
        if self.kernel is not sdpa_kernel:
            try:
                return self.kernel(q, k, v).to(v.dtype).flatten(2)
            except Exception as e:  # any kernel failure (device, dtype, head size): the generation goes on
                self._fall_back(f"failed ({_first_line(e)})")
        return sdpa_kernel(q, k, v).flatten(2)

    def __repr__(self) -> str:
        return f"AttentionBackend({self.name!r})" if self.name == self.requested else \
            f"AttentionBackend({self.requested!r} -> {self.name!r})"


@functools.lru_cache(maxsize=None)
def shared_backend(name: str) -> AttentionBackend:
    """One backend per name for the whole process: the models of a pipeline (student and teacher) share it, so a
    missing or failing kernel is reported once, not once per model."""
    return AttentionBackend(name)


def available_attention_backends() -> list[str]:
    """The backends whose package imports here (sdpa always)."""
    found = []
    for name, factory in _KERNEL_FACTORIES.items():
        try:
            factory()
        except Exception:  # not installed, or broken
            continue
        found.append(name)
    return found
