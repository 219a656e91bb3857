"""Precision modes and streaming, quantise-as-you-read loading.

Modes: fp32 / bf16 / fp16 (every tensor in that dtype), fp8_e4m3fn / fp8_e5m2 (Linear weights stored in fp8 with a
per-tensor scale, computed in bf16) and nf4 (Linear weights as bitsandbytes NF4, computed in bf16).

Quantised layers come in an `ops` namespace (the ComfyUI pattern): `WanDiT(cfg, ops)` builds them on the meta
device, then `fill_module` reads the checkpoint one tensor at a time and quantises each Linear weight as it
arrives, so a quantised load never holds a full-precision copy of the model.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AliceError
from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from ..models.ops import StandardOps
from .guards import check_finite

FULL_PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8_PRECISIONS: dict[str, torch.dtype] = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
PRECISION_NAMES: tuple[str, ...] = (*FULL_PRECISIONS, *FP8_PRECISIONS, "nf4")
QUANTIZED_COMPUTE_DTYPE = torch.bfloat16
NF4_BLOCKSIZE = 64
QUANTIZE_CHUNK_ELEMENTS = 1 << 20


def check_precision(precision: str) -> str:
    if precision not in PRECISION_NAMES:
        raise AliceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_NAMES)}")
    return precision


def is_quantized(precision: str) -> bool:
    return check_precision(precision) not in FULL_PRECISIONS


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype activations and non-quantised tensors use in this mode."""
    return FULL_PRECISIONS.get(check_precision(precision), QUANTIZED_COMPUTE_DTYPE)


def precision_of_dtype(dtype: torch.dtype) -> str:
    for name, d in FULL_PRECISIONS.items():
        if d == dtype:
            return name
    raise AliceError(f"unsupported model dtype {dtype}; use one of {', '.join(FULL_PRECISIONS)}")


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
            return self._fp8_matmul(x)
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


# -- streaming fill -----------------------------------------------------------------------------------------------
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


# -- the DiT ------------------------------------------------------------------------------------------------------
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
    from .checkpoint import open_checkpoint
    from .formats import detect_format, materialize, read_fp8_with_scale, stored_config

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


def weight_bytes(model: nn.Module) -> int:
    """Bytes of everything the model stores (quantised weights with their scales and bitsandbytes statistics)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


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
