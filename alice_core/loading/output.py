"""Every file and folder Alice writes goes through `atomic_output`: written under a hidden temporary name no other run
uses, then placed atomically and exclusively (renameat2 RENAME_NOREPLACE, else a hard link, else an exclusive mkdir),
so an output appears complete or not at all and never replaces a file this run did not create. Also the one sha256
helper and the streaming safetensors writer."""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import math
import os
import secrets
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AliceError
from .checkpoint import SAFETENSORS_NAMES
from .leftovers import holding, remove_stale

try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of a file being written: its name, shape and dtype up front, its values made on demand."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]


_RENAME_NOREPLACE = 1  # renameat2 flag (Linux 3.15+): fail with EEXIST instead of replacing
_AT_FDCWD = -100


def exists_message(path: Path) -> str:
    return f"{path} already exists; choose another output path or delete it"


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Atomic rename that never replaces `dst` (renameat2 RENAME_NOREPLACE); False where the system lacks it."""
    renameat2 = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    error = ctypes.get_errno()
    if error == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # the filesystem or kernel cannot do it
        return False
    raise OSError(error, os.strerror(error), str(dst))


def place(tmp: Path, path: Path, replace: bool = False) -> Path:
    """Give the finished `tmp` (a file or a folder next to `path`) the name `path`, atomically. Unless `replace`
    (a run's own checkpoint), the placement is exclusive: when `path` exists, even if it appeared while `tmp` was
    written, nothing is replaced and AliceError says so (the run that got there first wins)."""
    try:
        if replace:
            os.replace(tmp, path)
        elif not _rename_noreplace(tmp, path):
            if tmp.is_dir():
                os.mkdir(path)  # claims the name exclusively; renaming onto our own empty folder is atomic
                os.rename(tmp, path)
            else:
                _link_or_claim(tmp, path)
    except FileExistsError:
        raise AliceError(exists_message(path)) from None
    return path


def _link_or_claim(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic and exclusive; the temp name is dropped below
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem (FAT, some network mounts): claim the name, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        try:
            os.replace(tmp, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return
    os.unlink(tmp)


def temporary_name(path: Path) -> Path:
    """A hidden name next to `path` that no other run uses (pid and random bits), ending in `path`'s suffix so tools
    that go by the suffix (ffmpeg) see the format."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp{path.suffix}")


@contextmanager
def atomic_output(path: str | Path, replace: bool = False, folder: bool = False) -> Iterator[Path]:
    """The one way Alice writes an output: `with atomic_output(path) as tmp:` write the file (or, with `folder`, the
    folder's files) to `tmp`; when the block ends without error, `place` gives it `path`'s name. The output appears
    complete or not at all; on any error (or a kill) only the hidden temporary is left, and it is removed when
    possible. An existing `path` is refused before any work, unless `replace`."""
    path = Path(path).expanduser()
    if not replace and os.path.lexists(path):
        raise AliceError(exists_message(path))
    if not path.parent.is_dir():
        raise AliceError(f"output folder {path.parent} does not exist; create it first")
    for leftover in (f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}", f".{glob.escape(path.name)}.*.tmp"):
        remove_stale(path.parent, leftover)  # temporaries of killed earlier runs (their writers hold no lock)
    tmp = temporary_name(path)
    try:
        if folder:
            tmp.mkdir()
        else:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # surfaces permission errors now
    except PermissionError:
        raise AliceError(f"cannot write into {path.parent} (permission denied); choose another output folder") from None
    try:
        with holding(tmp):  # marks the temporary as in use until it is placed or removed
            yield tmp
            if not folder:
                tmp.chmod(0o644)  # some writers (safetensors) create 0600 files; outputs are meant to be shared
            place(tmp, path, replace)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, replace: bool = False) -> Path:
    with atomic_output(path, replace=replace) as tmp:
        tmp.write_text(text)
    return Path(path).expanduser()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_safetensors(path: str | Path, tensors: list[OutputTensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file one tensor at a time (never the whole model in memory), through `atomic_output`
    (complete or not at all, never over an existing file)."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for t in tensors:
        if t.dtype not in SAFETENSORS_NAMES:
            raise AliceError(f"cannot store {t.name} as {t.dtype} in safetensors")
        nbytes = math.prod(t.shape) * t.dtype.itemsize
        header[t.name] = {
            "dtype": SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for t in tensors:
                value = t.make()
                if tuple(value.shape) != tuple(t.shape) or value.dtype != t.dtype:
                    raise RuntimeError(f"{t.name}: made {tuple(value.shape)} {value.dtype}, declared {t.shape} {t.dtype}")
                f.write(memoryview(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file of in-memory tensors (LoRAs, exported DiTs, resume packs), never over an existing file."""
    from safetensors.torch import save_file

    with atomic_output(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path).expanduser()


def save_training_state(state: dict, path: str | Path) -> Path:
    """A run's checkpoint (torch.save of tensors and plain containers), replaced atomically each time: it is the
    run's own file, and the temporary name is the run's own, so concurrent runs never write into each other's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, replace=True) as tmp:
        torch.save(state, tmp)
    return path
