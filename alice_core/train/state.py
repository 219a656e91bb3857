"""Training state: the run's checkpoint (written and read by loading/: `save_atomic`, `load_checkpoint`), small
committable resume packs, the EMA, and device setup."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AliceError
from ..loading.checkpoint import read_safetensors_metadata, read_state_dict
from ..loading.checkpoint import read_training_state as load_checkpoint
from ..loading.output import save_tensors
from ..loading.output import save_training_state as save_atomic
from .distributed import copy_full_into

__all__ = ["EMA", "load_checkpoint", "read_resume_pack", "save_atomic", "training_device", "write_resume_pack",
           "write_run_resume_pack"]


def training_device(requested: str | None = None) -> torch.device:
    """The GPU when one is present (training is 100x faster there), else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class EMA:
    """Exponential moving average of parameters with the usual warm-up (decay grows from 0.1 towards `decay`)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, trainable_only: bool = False) -> None:
        self.decay = decay
        self.trainable_only = trainable_only  # a LoRA run averages its adapters, not a second copy of the base
        self.shadow = {k: v.detach().clone().float() for k, v in self._tensors(model).items()}

    def _tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.trainable_only:
            return {k: p for k, p in model.named_parameters() if p.requires_grad}
        return model.state_dict()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in self._tensors(model).items():
            self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """In place, so a sharded (FSDP) shadow takes its shard of a full checkpoint's."""
        copy_full_into(self.shadow, state)


RESUME_WEIGHTS = "resume.safetensors"


def write_resume_pack(state: dict, folder: str | Path, networks: tuple[str, ...]) -> Path:
    """A small, committable resume point: the named networks' weights in fp16 plus step, config and RNG states.

    Optimiser moments and the EMA are left out (they would triple the size; the shipped bundle already holds the
    EMA weights): a run resumed from a pack re-warms its optimiser and restarts its EMA from the current weights.
    A run resumed from its own checkpoint.pt is exact.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{net}.{k}": v.to(torch.float16).contiguous() for net in networks for k, v in state[net].items()}
    tensors["torch_rng"] = state["torch_rng"]
    weights = {"model", "student", "fake", "ema", "torch_rng"}
    extra = {k: v for k, v in state.items() if k not in weights and not k.startswith("opt")}
    return save_tensors(folder / RESUME_WEIGHTS, tensors,
                        metadata={"state": json.dumps(extra), "networks": json.dumps(list(networks))})


def read_resume_pack(folder: str | Path) -> dict:
    """The state dict `write_resume_pack` stored (weights back in fp32, no optimiser entries)."""
    path = Path(folder) / RESUME_WEIGHTS
    if not path.exists():
        raise AliceError(f"no resume pack at {path}; pass the folder that holds {RESUME_WEIGHTS}")
    meta, tensors = read_safetensors_metadata(path), read_state_dict(path)
    state = json.loads(meta["state"])
    for net in json.loads(meta["networks"]):
        prefix = f"{net}."
        state[net] = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
    state["torch_rng"] = tensors["torch_rng"]
    return state


def write_run_resume_pack(run_dir: str | Path, folder: str | Path) -> Path:
    """Resume pack of a teacher run (its model) or a distillation run (student and fake score)."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    return write_resume_pack(state, folder, tuple(n for n in ("model", "student", "fake") if n in state))
