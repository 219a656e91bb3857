"""Checks that run before a weight file's contents are trusted: sizes it declares against the bytes it holds, what a
refused pickle wanted, what a file that is not a checkpoint actually is, and finite values. Pure functions, no I/O
beyond reading a file's first bytes."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import AliceError

# The largest real headers are a few hundred KB (Wan 14B: ~1,100 tensors; a kohya LoRA with its training metadata:
# well under 1 MB). Refusing on the length field alone keeps a crafted 100 MB header from being read at all.
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
MAX_TENSORS = 200_000
# Distinct tensors may share a storage (tied weights, fused views), but they may not need more than this many times
# the bytes stored: more means overlapping views built to expand when copied.
MAX_VIEW_AMPLIFICATION = 2


def check_safetensors_header(path: str | Path) -> int:
    """The header length of a safetensors file, refused (AliceError) before anything is read or parsed when it is
    longer than the file or than any real header. Costs one 8-byte read."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
    if len(raw) < 8:
        raise AliceError(f"{path}: not a valid safetensors file ({size} bytes, shorter than its 8-byte header length)")
    header_len = struct.unpack("<Q", raw)[0]
    if header_len > size - 8:
        raise AliceError(
            f"{path}: not a valid safetensors file (its header claims {header_len} bytes but the file has {size}); "
            "the file is truncated or not safetensors: download or export it again"
        )
    if header_len > MAX_SAFETENSORS_HEADER:
        raise AliceError(
            f"{path}: refused: its safetensors header is {header_len / 2**20:.0f} MiB (real checkpoints need under "
            f"{MAX_SAFETENSORS_HEADER // 2**20} MiB); the file is malformed or crafted, use another copy"
        )
    return header_len


def check_entry_count(count: int, source: str) -> None:
    if count > MAX_TENSORS:
        raise AliceError(f"{source}: refused: {count} tensors (real checkpoints hold under {MAX_TENSORS})")


def check_tensor_sizes(tensors: Mapping[str, torch.Tensor], file_size: int, source: str) -> None:
    """Refuse tensors that would need more memory than the file stores: stride-0 / expanded views, many views over
    one storage, storages larger than the file. Runs on a memory-mapped load, before any tensor is copied."""
    storages: dict[int, int] = {}
    views: dict[tuple, int] = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage()
        need = tensor.numel() * tensor.element_size()
        if need > storage.nbytes():
            raise AliceError(
                f"{source}: refused: tensor {key!r} {list(tensor.shape)} needs {_size(need)} but the file stores "
                f"{_size(storage.nbytes())} for it (an expanded or overlapping view); re-save the checkpoint with "
                "contiguous tensors (tensor.contiguous()), or use a safetensors file"
            )
        storages[storage.data_ptr()] = storage.nbytes()
        views[(storage.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)] = need
    check_entry_count(len(tensors), source)
    stored, declared = sum(storages.values()), sum(views.values())
    if stored > file_size:
        raise AliceError(f"{source}: refused: its tensors claim {_size(stored)} but the file has {_size(file_size)}")
    if declared > MAX_VIEW_AMPLIFICATION * max(stored, 1):
        raise AliceError(
            f"{source}: refused: its tensors are views needing {_size(declared)} over {_size(stored)} of stored data; "
            "re-save the checkpoint with one contiguous tensor per name, or use a safetensors file"
        )


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def check_finite(name: str, tensor: torch.Tensor, source: str) -> None:
    """Refuse NaN / inf weights: they sample an all-black video with no other sign of trouble."""
    # A float32 sum is NaN or inf when any element is, and about 6x faster than isfinite().all() (no bool copy of
    # every weight); only a non-finite sum (or finite values summing past float32's range) needs the exact count.
    if not tensor.is_floating_point() or not tensor.numel() or bool(tensor.sum(dtype=torch.float32).isfinite()):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise AliceError(
            f"{source}: tensor {name!r} holds {bad} NaN/inf values; the checkpoint is corrupt or was saved from a "
            "diverged run: use another checkpoint"
        )


# -- what a refused or unreadable .pt file is ---------------------------------------------------------------------
_GLOBAL = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def refused_global(message: str) -> str | None:
    """The `module.name` a weights-only unpickler refused to import, from torch's message (2.4-2.13 wordings:
    "Unsupported global: GLOBAL os.system ..." and "Trying to load unsupported GLOBAL posix.system ...")."""
    found = _GLOBAL.search(re.sub(r"\x1b\[[0-9;]*m", "", message))
    return found.group(1) if found else None


def describe_non_checkpoint(path: Path) -> str | None:
    """A few words on what a file that torch cannot read looks like instead (text, an archive, an image...), or
    None when its first bytes say nothing."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GGUF", "a GGUF file"),
                        (b"\x1f\x8b", "a gzip archive"), (b"<!DOCTYPE", "an HTML page"), (b"<html", "an HTML page"),
                        (b"version https://git-lfs", "a Git LFS pointer (the real file was not downloaded)")):
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return None


def file_kind_hint(path: Path) -> str:
    """' (it is a text file)' style suffix for error messages, or ''."""
    what = describe_non_checkpoint(path) if path.is_file() else None
    return f" (it is {what})" if what else ""



# -- code in model folders -----------------------------------------------------------------------------------------
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def check_no_remote_code(folder: str | Path) -> None:
    """Refuse a transformers folder whose configs point at Python code shipped in the folder (`auto_map`): Alice
    never runs it (and passes trust_remote_code=False, so transformers neither runs nor asks)."""
    import json

    folder = Path(folder)
    for name in CODE_CONFIGS:
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AliceError(f"{file}: not valid JSON ({exc}); restore it from the model's original files") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise AliceError(
                f"{file}: refused: its auto_map asks to run Python code from the model folder, which Alice never "
                "does; use the standard transformers files for this model (no auto_map)"
            )
