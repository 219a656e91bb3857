"""Data-parallel training across processes launched by torchrun: the process group, FSDP2 sharding of the DiTs,
each rank's share of a global batch, and the full (gathered) state that rank 0 writes as the run's checkpoint.

Checkpoints stay one file in the single-process format (gathered on rank 0, not torch.distributed.checkpoint's
one-file-per-rank folders): the project's rule is that only rank 0 writes, atomically, and so a run resumes on any
number of processes, and `alice train pack|export` read it unchanged. The cost is that rank 0 holds the full
state in CPU memory while it writes, which fits the DiT sizes Alice trains (up to 1.3B with its two copies).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import AliceError

# FSDP and DTensor (torch.distributed.fsdp / .tensor) take about 1 s to import, and the finetune settings that
# `alice generate`'s parser reads import this module: they are imported where a model is sharded.


@contextmanager
def process_group_from_env() -> Iterator[None]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl with one GPU per process, gloo
    on CPU; left again on the way out."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's GPU
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rows(global_batch: int) -> slice:
    """This rank's rows of a global batch. Every rank draws the noise of the whole global batch from one shared
    generator and keeps its rows, so N processes compute what one process computes on the same batch."""
    rank, world = rank_world()
    if global_batch % world:
        raise AliceError(f"--batch-size {global_batch} is the global batch and must be divisible by the {world} processes; "
                         f"use a multiple of {world}")
    n = global_batch // world
    return slice(rank * n, (rank + 1) * n)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: each transformer block, then the rest, sharded over the ranks (a no-op in a single process). Call
    after the model's final structure (LoRA adapters attached) and device; its parameters become DTensors."""
    _, world = rank_world()
    if world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(next(model.parameters()).device.type, (world,))  # over the default process group
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _is_dtensor(value: torch.Tensor) -> bool:
    """isinstance(value, DTensor), without importing DTensor: none exists until its module has been imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def full_tensors(tensors: Mapping[str, torch.Tensor], all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded CPU copies of (possibly sharded) tensors. Under FSDP every rank must call this in the same order
    (it gathers); only rank 0 keeps the copies (it writes the checkpoint) unless all_ranks, others get {}."""
    keep = all_ranks or rank_world()[0] == 0
    out = {}
    for key, value in tensors.items():
        full = value.full_tensor() if _is_dtensor(value) else value.detach()
        if keep:
            out[key] = full.cpu()
    return out


def copy_full_into(targets: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor]) -> None:
    """Copy full tensors (a checkpoint's) into same-named, possibly sharded tensors (parameters, EMA) in place."""
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(_like(full[key], target))


def _like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`value` laid out as `target`: this rank's shard when target is sharded, else value itself."""
    if _is_dtensor(target) and not _is_dtensor(value):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
    return value


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """`opt.state_dict()` with its sharded moments gathered: the single-process layout (rank 0 keeps it)."""
    state = opt.state_dict()
    gathered = {i: full_tensors(s) for i, s in state["state"].items()}
    return {**state, "state": gathered}


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a single-process layout optimiser state, sharding each parameter's moments as the parameter is."""
    params = [p for group in opt.param_groups for p in group["params"]]
    per_param = {i: {k: _like(v, params[i]) if k != "step" else v for k, v in s.items()}
                 for i, s in state["state"].items()}
    opt.load_state_dict({**state, "state": per_param})


def gather_objects(obj: object) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (after rank 0 changed files the others are about to look at)."""
    if rank_world()[1] > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")  # nccl reduces GPU tensors only


def stream_states(rng: np.random.Generator) -> list[str]:
    """Every rank's data-stream state (JSON), for a checkpoint's `numpy_rng`; collective under FSDP."""
    return gather_objects(json.dumps(rng.bit_generator.state))


def restore_stream(rng: np.random.Generator, states: str | list[str]) -> None:
    """Continue this rank's data stream from a checkpoint's `numpy_rng` (one state per rank of the writing run, or
    one string from runs before multi-process training); a rank beyond the writing run's world keeps its own."""
    states = [states] if isinstance(states, str) else states
    rank = rank_world()[0]
    if rank < len(states):
        rng.bit_generator.state = json.loads(states[rank])


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per-rank scalars (losses of each rank's rows) averaged over the ranks: the global batch's value."""
    _, world = rank_world()
    if world == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: v / world for k, v in zip(values, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop request must stop all ranks at the same step)."""
    _, world = rank_world()
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
