"""Training checkpoints written atomically and read back without unpickling code, plus device/thread setup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import AliceError


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    if not Path(path).exists():
        raise AliceError(f"no training checkpoint at {path}; train first (alice train teacher/distill --out {Path(path).parent})")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AliceError(f"{path}: cannot read training checkpoint ({str(exc).splitlines()[0][:160]}); delete it to start over") from None


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
        self.shadow = {k: v.clone().float() for k, v in state.items()}


RESUME_WEIGHTS = "resume.safetensors"


def write_resume_pack(state: dict, folder: str | Path, networks: tuple[str, ...]) -> Path:
    """A small, committable resume point: the named networks' weights in fp16 plus step, config and RNG states.

    Optimiser moments and the EMA are left out (they would triple the size; the shipped bundle already holds the
    EMA weights): a run resumed from a pack re-warms its optimiser and restarts its EMA from the current weights.
    A run resumed from its own checkpoint.pt is exact.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{net}.{k}": v.to(torch.float16).contiguous() for net in networks for k, v in state[net].items()}
    tensors["torch_rng"] = state["torch_rng"]
    weights = {"model", "student", "fake", "ema", "torch_rng"}
    extra = {k: v for k, v in state.items() if k not in weights and not k.startswith("opt")}
    tmp = folder / f".{RESUME_WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata={"state": json.dumps(extra), "networks": json.dumps(list(networks))})
    tmp.chmod(0o644)
    os.replace(tmp, folder / RESUME_WEIGHTS)
    return folder / RESUME_WEIGHTS


def read_resume_pack(folder: str | Path) -> dict:
    """The state dict `write_resume_pack` stored (weights back in fp32, no optimiser entries)."""
    from safetensors import safe_open

    path = Path(folder) / RESUME_WEIGHTS
    if not path.exists():
        raise AliceError(f"no resume pack at {path}; pass the folder that holds {RESUME_WEIGHTS}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = json.loads(meta["state"])
        for net in json.loads(meta["networks"]):
            prefix = f"{net}."
            state[net] = {k[len(prefix):]: f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}
        state["torch_rng"] = f.get_tensor("torch_rng")
    return state


def write_run_resume_pack(run_dir: str | Path, folder: str | Path) -> Path:
    """Resume pack of a teacher run (its model) or a distillation run (student and fake score)."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    return write_resume_pack(state, folder, tuple(n for n in ("model", "student", "fake") if n in state))
