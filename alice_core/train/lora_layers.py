"""Trainable LoRA adapters for the Wan DiT, and their export in the PEFT key layout the LoRA loader reads.

The adapters are the project's own, not peft's: peft wraps `nn.Linear` modules by class, while Alice's Linears come
from an injected `ops` namespace (fp8 and NF4 layers are other classes), and the rCM trainer takes exact JVPs
through the network with torch.func. A forward hook that adds `scale * up(down(x))` to any Linear's output works
with every layer kind (a quantised base gives QLoRA-style training for free) and stays a plain function of its
parameters for torch.func. The hook mechanism is the one `loading/lora.py` uses for separate inference adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AliceError
from ..loading.lora import attach_adapter
from .distributed import copy_full_into, full_tensors

# Attention projections and the feed-forward layers of every block: the layers LoRA finetunes of Wan usually train.
DEFAULT_TARGET_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                          "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


class TrainableLora(nn.Module):
    """y += (alpha / rank) * up(down(x)). `up` starts at zero, so a fresh adapter leaves the model unchanged."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rank, self.alpha = rank, alpha
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init scale for `down`
        self.down = nn.Parameter((torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound)
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.to(self.down.dtype), self.down), self.up) * self.scale


def matches_target(name: str, targets: Iterable[str]) -> bool:
    """`blocks.3.self_attn.q` matches the target `self_attn.q` (or `q`, or its full name)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def add_trainable_loras(model: nn.Module, rank: int, alpha: float, target_modules: Iterable[str] = DEFAULT_TARGET_MODULES,
                        seed: int = 0) -> dict[str, TrainableLora]:
    """Freeze `model` and attach a fresh adapter to every Linear whose name ends with one of `target_modules`."""
    if rank < 1:
        raise AliceError(f"LoRA rank must be at least 1, got {rank}")
    targets = tuple(target_modules)
    generator = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    adapters: dict[str, TrainableLora] = {}
    for name, module in model.named_modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features") and matches_target(name, targets):
            adapter = TrainableLora(module.in_features, module.out_features, rank, alpha, generator)
            device = next(module.parameters()).device
            attach_adapter(module, adapter.to(device))
            adapters[name] = adapter
    if not adapters:
        raise AliceError(f"no Linear layer of the model matches target_modules {list(targets)}; "
                         f"use names such as {', '.join(DEFAULT_TARGET_MODULES[:3])}")
    return adapters


def lora_parameters(adapters: dict[str, TrainableLora]) -> dict[str, torch.Tensor]:
    """Adapter weights by stable names (for optimisers, checkpoints and exact resume)."""
    return {f"{name}.{part}": getattr(a, part) for name, a in adapters.items() for part in ("down", "up")}


def load_lora_parameters(adapters: dict[str, TrainableLora], state: dict[str, torch.Tensor]) -> None:
    """Full adapter weights into the adapters (their shards, when the model is sharded)."""
    params = lora_parameters(adapters)
    if set(params) != set(state):
        raise AliceError("the finetune checkpoint's LoRA layers do not match this run's settings; "
                         "delete the work folder or use the same rank and target modules")
    copy_full_into(params, state)


def lora_state_dict(adapters: dict[str, TrainableLora], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """PEFT layout (`<layer>.lora_A.weight`, `.lora_B.weight`, `.alpha`) in official Wan names, on every rank
    (under FSDP every rank must call it: it gathers the shards)."""
    full = full_tensors(lora_parameters(adapters), all_ranks=True)
    out: dict[str, torch.Tensor] = {}
    for name, a in adapters.items():
        out[f"{name}.lora_A.weight"] = full[f"{name}.down"].to(dtype).contiguous()
        out[f"{name}.lora_B.weight"] = full[f"{name}.up"].to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(a.alpha))
    return out
