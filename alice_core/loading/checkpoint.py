"""Reading checkpoint files safely: safetensors lazily, .pt/.pth only as plain tensors (never arbitrary pickles)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import AliceError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    # safe_open memory-maps the file; tensors are materialised one at a time.
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise AliceError(
            f"{path}: refused to load: the file is a pickle that needs code execution, not a plain state dict "
            f"({str(exc).splitlines()[0][:160]}). Convert it to safetensors with a trusted tool, or use a safetensors file."
        ) from None
    except RuntimeError as exc:
        raise AliceError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0][:160]})") from None
    # Training checkpoints often wrap the weights: {"state_dict": ...}, {"model": ...}, {"net": ...}.
    for wrapper in ("state_dict", "model", "module", "net_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise AliceError(f"{path}: expected a state dict (name -> tensor), found a {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _diffusers_weight_files(folder: Path) -> list[Path]:
    for sub in (folder, folder / "transformer"):
        index = next(iter(sorted(sub.glob("*.safetensors.index.json"))), None)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [sub / s for s in shards]
        files = sorted(sub.glob("*.safetensors"))
        if files:
            return files
    return []


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, or of a diffusers model folder (sharded or not)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AliceError(f"checkpoint not found: {path}; check the path (or pass a model name from `alice models`)")
    if path.is_dir():
        files = _diffusers_weight_files(path)
        if not files:
            raise AliceError(f"{path}: folder holds no *.safetensors weights (expected a diffusers model folder)")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(_read_safetensors(f))
        return state
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            return _read_safetensors(path)
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise AliceError(f"{path}: not a valid safetensors file ({exc})") from None
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise AliceError(f"{path}: unsupported checkpoint type {path.suffix!r}; use .safetensors, .pt or .pth")
