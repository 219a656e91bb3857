"""Layer namespace injected into the models, so quantised layers swap in without touching model code.

The models never name `nn.Linear` directly: they take an `ops` object whose `Linear`, `Conv3d`,
`LayerNorm` and `RMSNorm` build the layers (the ComfyUI pattern). Quantised namespaces subclass
`StandardOps` and replace `Linear`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Float32 for the precision-sensitive parts (norms, modulation, residual sums); float64 stays float64 so
    numerical checks (finite differences) can run the whole model in double precision."""
    return x if x.dtype == torch.float64 else x.float()


def skip_init_on_meta(init: Callable[[], None], weight: torch.Tensor) -> None:
    """Run a layer's random init, except on the meta device (a checkpoint fills the weights there): torch's meta
    kernels for uniform_ run in Python, ~20 ms per tiny DiT built, 5 builds per `alice generate`."""
    if not weight.is_meta:
        init()


@functools.lru_cache(maxsize=None)
def _onednn_supports(dtype: torch.dtype) -> bool:
    """oneDNN runs this half dtype natively on this CPU (bf16: AVX512-BF16 / AMX; fp16: AVX512-FP16)."""
    if not torch.backends.mkldnn.is_available():
        return False
    return torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16 else torch.ops.mkldnn._is_mkldnn_fp16_supported()


def no_autograd() -> bool:
    """No derivative is being taken: grad mode off, no forward-mode dual level, no torch.func transform (rCM's jvp
    runs under no_grad). Then ops without derivatives, `out=` and in-place ops may run."""
    return (
        not torch.is_grad_enabled()
        and torch.autograd.forward_ad._current_level < 0
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def _onednn_inference(weight: torch.Tensor) -> bool:
    """Whether a half-precision CPU Linear may run as one oneDNN call with its bias (and activation) fused (the
    fused op has no derivatives)."""
    return weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16) and no_autograd() \
        and _onednn_supports(weight.dtype)


class Linear(nn.Linear):
    """nn.Linear that casts its input to the weight dtype, so float32 norm and modulation outputs can feed bf16 layers.

    Inference in bf16/fp16 on a CPU adds the bias inside the GEMM (oneDNN post-op) rather than in a second pass
    over the output; `gelu_tanh` also applies GELU(tanh) there (the DiT's FFN), in float32 before the one rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if _onednn_inference(self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def gelu_tanh(self, x: torch.Tensor) -> torch.Tensor | None:
        """GELU(tanh)(self(x)) as one fused call when that is exact to do (see `_onednn_inference`, and no hooks
        such as LoRA adapters' on this layer); None otherwise, and the caller runs the layers one by one."""
        if self._forward_hooks or self._forward_pre_hooks or nn.modules.module._global_forward_hooks \
                or nn.modules.module._global_forward_pre_hooks or not _onednn_inference(self.weight):
            return None
        return torch.ops.mkldnn._linear_pointwise(x.to(self.weight.dtype), self.weight, self.bias, "gelu", [], "tanh")

    def reset_parameters(self) -> None:
        skip_init_on_meta(super().reset_parameters, self.weight)


class Conv3d(nn.Conv3d):
    def reset_parameters(self) -> None:
        skip_init_on_meta(super().reset_parameters, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weight dtype (Wan keeps its norms in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upcast(x)
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class RMSNorm(nn.Module):
    """Wan's RMSNorm: x / rms(x) * weight, computed in float32, returned in the input's dtype when that is the
    weight's (upcast the input for a float32 result), else in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != x.dtype:  # e.g. bf16 activations of float32 weights under autocast: all float32
            x = upcast(x)
        weight = self.weight.to(x.dtype)
        if not no_autograd():
            # The fused kernel accumulates half inputs in float32 and rounds once.
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        # Inference: x * rsqrt(mean(x^2) + eps) written straight into x's dtype, then * weight in place (Wan's own
        # roundings for half inputs). On a CPU F.rms_norm makes two float32 temporaries of the input's size: for the
        # cross-attention keys of 512 text tokens they set the DiT's peak memory, and this is 2x faster in float32.
        # (Not under autograd: `out=` and in-place ops take no derivatives.)
        inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=upcast(x).dtype)
        inv = inv.square_().div_(x.shape[-1]).add_(self.eps).rsqrt_()
        return torch.mul(x, inv, out=torch.empty_like(x)).mul_(weight)


class StandardOps:
    Linear = Linear
    Conv3d = Conv3d
    LayerNorm = LayerNorm
    RMSNorm = RMSNorm
