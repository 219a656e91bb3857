"""How a loaded DiT runs: its attention kernel, block swap, torch.compile per block — one place for the loaders, the
CLI, the nodes and the app to set them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import DEFAULT_ATTENTION
from .block_swap import BlockSwap
from .dit import WanDiT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiTRuntime:
    """attention: sdpa | flash | sage (a missing one falls back to sdpa); blocks_on_device: None keeps every block on
    the device, K streams the others from CPU memory (block swap); compile: torch.compile each block's forward."""

    attention: str = DEFAULT_ATTENTION
    blocks_on_device: int | None = None
    compile: bool = False


def _compiled_or_eager(eager: Callable, label: str) -> Callable:
    """torch.compile(eager), run eagerly from the first compile failure on (no compiler, an unsupported op)."""
    compiled = torch.compile(eager)
    state = {"fn": compiled}

    def forward(*args, **kwargs):
        try:
            return state["fn"](*args, **kwargs)
        except Exception as e:
            if state["fn"] is eager:
                raise
            logger.warning("torch.compile failed for %s (%s); running it uncompiled", label, type(e).__name__)
            state["fn"] = eager
            return eager(*args, **kwargs)

    return forward


def compile_blocks(model: WanDiT) -> None:
    """Compile each block's forward (the blocks are identical, so one graph serves all). Module hooks, such as
    block swap's, stay outside the compiled code."""
    for i, block in enumerate(model.blocks):
        if "forward" not in vars(block):  # not compiled yet (a model can be prepared twice)
            block.forward = _compiled_or_eager(block.forward, f"block {i}")


def prepare_dit(model: WanDiT, device: str | torch.device, runtime: DiTRuntime = DiTRuntime()) -> WanDiT:
    """Set the attention kernel, place the model on `device` (all of it, or K blocks with block swap), compile."""
    model.set_attention(runtime.attention)
    k = runtime.blocks_on_device
    if getattr(model, "block_swap", None) is not None:
        model.block_swap.remove()
    if k is not None and k < len(model.blocks):
        BlockSwap(model, k, device)
    else:
        model.to(device)
    if runtime.compile:
        compile_blocks(model)
    return model
