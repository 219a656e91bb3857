"""Quantised layer kinds: fp8 (per-tensor scale, optional fp8 matmul) and NF4 (bitsandbytes) Linears, and the ops
namespaces that build them (the ComfyUI pattern: `WanDiT(cfg, ops)` builds quantised layers on the meta device and
`fill.fill_module` quantises each weight as it is read). Which precision uses which kind: precision.py.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AliceError
from ..models.ops import StandardOps
from .precision import FP8_PRECISIONS, QUANTIZED_COMPUTE_DTYPE, check_precision

logger = logging.getLogger(__name__)

NF4_BLOCKSIZE = 64
QUANTIZE_CHUNK_ELEMENTS = 1 << 20


# -- fp8 ----------------------------------------------------------------------------------------------------------
def quantize_fp8(weight: torch.Tensor, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8: scale = amax / fp8 max, stored = weight / scale. Returns (fp8 tensor, fp32 scale).

    Works through the rows in slices so the float32 temporaries stay small (a 14B FFN weight is 280 MB in fp32)."""
    fp8_max = torch.finfo(fp8_dtype).max
    amax = torch.maximum(weight.max().abs(), weight.min().abs()).float()
    scale = (amax / fp8_max).clamp(min=torch.finfo(torch.float32).tiny)
    out = torch.empty(weight.shape, dtype=fp8_dtype, device=weight.device)
    rows = weight.reshape(-1, weight.shape[-1]) if weight.ndim else weight.reshape(1, 1)
    flat_out = out.view(rows.shape)
    step = max(1, QUANTIZE_CHUNK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        chunk = (rows[start:start + step].float() / scale).clamp_(-fp8_max, fp8_max)  # a copy: never writes to `weight`
        flat_out[start:start + step] = chunk.to(fp8_dtype)
    return out, scale.reshape(())


def _check_weight_shape(layer: nn.Module, weight: torch.Tensor) -> None:
    if tuple(weight.shape) != (layer.out_features, layer.in_features):
        raise AliceError(
            f"weight of shape {tuple(weight.shape)} does not fit Linear({layer.in_features}, {layer.out_features})"
        )


@functools.lru_cache(maxsize=None)
def _fp8_matmul_supported(device: torch.device) -> bool:
    # Hardware fp8 matmul needs Ada / Hopper or newer (compute capability 8.9+).
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(nn.Module):
    """Linear whose weight is stored in fp8 with one float32 scale; computes in `compute_dtype`.

    On GPUs with compute capability >= 8.9 (and e4m3fn weights) the matmul runs in fp8 through
    `torch._scaled_mm`, with the input quantised per tensor on the fly; everywhere else the weight is upcast.
    The ops namespace sets the class attributes below.
    """

    storage_dtype: torch.dtype = torch.float8_e4m3fn
    compute_dtype: torch.dtype = QUANTIZED_COMPUTE_DTYPE
    fast_matmul: bool = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        # `dtype` is accepted for nn.Linear's signature; storage and compute dtypes are fixed by the class.
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight = torch.empty(out_features, in_features, dtype=self.storage_dtype, device=device)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        if bias:
            bias = torch.empty(out_features, dtype=self.compute_dtype, device=device)
            self.bias = nn.Parameter(bias, requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def set_weight(self, weight: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Store `weight`: quantised here, or taken as is when it is already `storage_dtype` with its `scale`."""
        _check_weight_shape(self, weight)
        if weight.dtype == self.storage_dtype:
            q, scale = weight, torch.ones(()) if scale is None else scale
        else:
            q, scale = quantize_fp8(weight, self.storage_dtype)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight_scale = scale.to(device=q.device, dtype=torch.float32).reshape(())

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.compute_dtype
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def _use_fast_path(self, x: torch.Tensor) -> bool:
        return (
            self.fast_matmul
            and self.weight.dtype == torch.float8_e4m3fn
            and self.compute_dtype in (torch.bfloat16, torch.float16)
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and _fp8_matmul_supported(x.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        if self._use_fast_path(x):
            try:
                return self._fp8_matmul(x)
            except RuntimeError as e:  # a torch / GPU whose fp8 matmul refuses these tensors: upcast from now on
                type(self).fast_matmul = False  # the class of this model's fp8 layers (one per fp8_ops() call)
                logger.warning("fp8 matmul (torch._scaled_mm) failed (%s); fp8 weights are upcast to %s instead",
                               str(e).splitlines()[0] if str(e) else type(e).__name__, str(self.compute_dtype)[6:])
        return F.linear(x, self.dequantized_weight(), self.bias)

    def _fp8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        fp8_max = torch.finfo(torch.float8_e4m3fn).max
        x_scale = (rows.abs().amax().float() / fp8_max).clamp(min=torch.finfo(torch.float32).tiny)
        xq = (rows / x_scale.to(rows.dtype)).clamp(-fp8_max, fp8_max).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=self.bias, out_dtype=self.compute_dtype
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage={self.storage_dtype}"


def fp8_ops(fp8_dtype: torch.dtype = torch.float8_e4m3fn, fast_matmul: bool = True):
    """An ops namespace whose Linear stores fp8 weights (`fp8_dtype`) and computes in bf16."""
    name = "Fp8Linear_" + str(fp8_dtype).removeprefix("torch.float8_")
    linear = type(name, (Fp8Linear,), {"storage_dtype": fp8_dtype, "fast_matmul": fast_matmul})
    return type("Fp8Ops", (StandardOps,), {"Linear": linear})


# -- NF4 ----------------------------------------------------------------------------------------------------------
def _import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise AliceError(
            "precision nf4 needs bitsandbytes: `pip install bitsandbytes` (>= 0.50 also runs on CPU)"
        ) from None
    return bitsandbytes


@functools.lru_cache(maxsize=None)
def nf4_linear_class():
    """bitsandbytes `Linear4bit` (NF4, double-quantised absmax, blocks of 64) with a streaming `set_weight`."""
    bnb = _import_bitsandbytes()

    class Nf4Linear(bnb.nn.Linear4bit):
        compute_dtype_default = QUANTIZED_COMPUTE_DTYPE

        def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
            super().__init__(in_features, out_features, bias=bias, compute_dtype=self.compute_dtype_default,
                             compress_statistics=True, quant_type="nf4", device=device)
            # Keep bitsandbytes' portable layout on CPU (its repacking for AVX512-bf16 CPUs breaks
            # dequantisation and moving the layer to a GPU afterwards).
            self.support_avx512bf16_for_cpu = False

        def set_weight(self, weight: torch.Tensor, scale: torch.Tensor | None = None) -> None:
            _check_weight_shape(self, weight)
            # bitsandbytes quantises fp32/bf16/fp16 directly; anything else (an fp8 file) goes through bf16.
            data = weight if weight.dtype in (torch.float32, torch.bfloat16, torch.float16) else weight.to(torch.bfloat16)
            if scale is not None:
                data = data.float() * scale.float()
            param = bnb.nn.Params4bit(data.contiguous(), requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE,
                                      compress_statistics=True, module=self)
            self.weight = param._quantize(data.device)

        def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
            w = bnb.functional.dequantize_4bit(self.weight.data, self.weight.quant_state)
            return w.to(dtype or self.compute_dtype_default)

    return Nf4Linear


def nf4_ops():
    return type("Nf4Ops", (StandardOps,), {"Linear": nf4_linear_class()})


def quantized_ops(precision: str, fast_fp8_matmul: bool = True):
    """The ops namespace for a precision name (StandardOps for fp32/bf16/fp16)."""
    if check_precision(precision) in FP8_PRECISIONS:
        return fp8_ops(FP8_PRECISIONS[precision], fast_fp8_matmul)
    if precision == "nf4":
        return nf4_ops()
    return StandardOps


def is_quantized_linear(module: nn.Module) -> bool:
    return hasattr(module, "set_weight") and hasattr(module, "dequantized_weight")


def keep_full_precision(model: nn.Module, names: Iterable[str]) -> None:
    """Swap the named (still meta) quantised Linears back to plain `StandardOps.Linear` layers."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        old = model.get_submodule(name)
        with torch.device("meta"):
            new = StandardOps.Linear(old.in_features, old.out_features, bias=old.bias is not None)
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def replace_linears(model: nn.Module, linear_class, select: Callable[[str], bool]) -> None:
    """Swap the selected (still meta) `nn.Linear`s of a model built elsewhere (e.g. transformers) for `linear_class`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not is_quantized_linear(module) and select(name):
            parent_name, _, attr = name.rpartition(".")
            with torch.device("meta"):
                new = linear_class(module.in_features, module.out_features, bias=module.bias is not None)
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of everything the model stores (quantised weights with their scales and bitsandbytes statistics)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
