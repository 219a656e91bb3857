"""Reading checkpoint files safely: safetensors lazily, .pt/.pth only as plain tensors (never arbitrary pickles)."""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import AliceError
from .guards import check_entry_count, check_safetensors_header, check_tensor_sizes, file_kind_hint, refused_global

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (header sizes checked first); AliceError for a corrupt file."""
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # SafetensorError is neither OSError nor ValueError
        raise AliceError(f"{path}: not a valid safetensors file ({_first_line(exc)})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    # safe_open memory-maps the file; tensors are materialised one at a time.
    check_safetensors_header(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        check_entry_count(len(keys), str(path))
        return {k: f.get_tensor(k) for k in keys}


def _first_line(exc: BaseException) -> str:
    return ((str(exc).splitlines() or [""])[0] or type(exc).__name__)[:200]


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    return _load_pickle(path)[0]


def _torch_load(path: Path) -> tuple[object, bool]:
    """torch.load restricted to tensors and plain containers; memory-mapped unless the file predates the zip
    format (then it is read into memory). Returns the object and whether it is memory-mapped."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True), True
    except RuntimeError as exc:
        if "zipfile" not in str(exc) and "mmap" not in str(exc):
            raise
    return torch.load(str(path), map_location="cpu", weights_only=True), False


def _load_pickle(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    try:
        obj, mapped = _torch_load(path)
    except pickle.UnpicklingError as exc:
        wanted = refused_global(str(exc))
        if wanted is not None:
            raise AliceError(
                f"{path}: refused to load: the file is a pickle that wants to run code ({wanted}), not a plain "
                "state dict. Use a safetensors file, or convert this one with a tool you trust."
            ) from None
        raise AliceError(f"{path}: not a torch checkpoint{file_kind_hint(path)}: its pickle data is unreadable "
                         "(corrupt or not a checkpoint); download or export it again") from None
    except Exception as exc:  # garbage bytes make the unpickler raise IndexError, KeyError, EOFError, RuntimeError...
        raise AliceError(f"{path}: not a torch checkpoint{file_kind_hint(path)}: its pickle data is unreadable "
                         f"({type(exc).__name__}: {_first_line(exc)[:160]}); download or export it again") from None
    # Training checkpoints often wrap the weights: {"state_dict": ...}, {"model": ...}, {"net": ...}.
    for wrapper in ("state_dict", "model", "module", "net_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise AliceError(f"{path}: expected a state dict (name -> tensor), found a {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    check_tensor_sizes(tensors, path.stat().st_size, str(path))
    return tensors, mapped


def load_torch_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pt/.pth/.bin file (memory-mapped when it is a zip checkpoint), plain data only and with
    their declared sizes checked against the file before anything is copied."""
    return _load_pickle(Path(path))[0]


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


def _locate_checkpoint(path: str | Path) -> tuple[Path, list[Path] | None]:
    """The checkpoint path, and for a diffusers folder its weight files; clear errors when neither exists."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AliceError(f"checkpoint not found: {path}; check the path (or pass a model name from `alice models`)")
    if not path.is_dir():
        return path, None
    files = _diffusers_weight_files(path)
    if not files:
        raise AliceError(f"{path}: folder holds no *.safetensors weights (expected a diffusers model folder)")
    return path, files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, or of a diffusers model folder (sharded or not)."""
    path, files = _locate_checkpoint(path)
    if files is not None:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(_read_safetensors(f))
        return state
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            return _read_safetensors(path)
        except AliceError:
            raise
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise AliceError(f"{path}: not a valid safetensors file ({_first_line(exc)}){file_kind_hint(path)}") from None
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise AliceError(f"{path}: unsupported checkpoint type {path.suffix!r}{file_kind_hint(path)}; "
                     "use a .safetensors, .pt or .pth checkpoint")


# -- lazy, streaming access --------------------------------------------------------------------------------------
# Quantised loading reads one tensor at a time and must not keep the file's pages resident: safetensors are read
# with plain file reads (no mmap), .pt/.pth are memory-mapped and each tensor's pages are dropped once copied out.

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class CheckpointReader:
    """Names, shapes and dtypes of a checkpoint's tensors without loading them; `read(key)` loads one.

    `infos` is in file order, so reading in that order is sequential I/O. Use as a context manager.
    """

    def __init__(self, source: str, infos: dict[str, TensorInfo], metadata: dict[str, str]) -> None:
        self.source = source
        self.infos = infos
        self.metadata = metadata

    def keys(self) -> list[str]:
        return list(self.infos)

    def read(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_safetensors_header(path: Path, file) -> tuple[int, dict]:
    header_len = check_safetensors_header(path)
    file.seek(8)
    try:
        header = json.loads(file.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AliceError(f"{path}: not a valid safetensors file (unreadable header: {exc})") from None
    if not isinstance(header, dict):
        raise AliceError(f"{path}: not a valid safetensors file (header is not a JSON object)")
    check_entry_count(len(header), str(path))
    return 8 + header_len, header


class SafetensorsReader(CheckpointReader):
    """A safetensors file read with plain positioned reads: only the header up front, each tensor on `read`."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = path.stat().st_size
        try:
            data_start, header = _parse_safetensors_header(path, self._file)
            metadata = header.pop("__metadata__", None) or {}
            self._spans: dict[str, tuple[int, int]] = {}
            infos = {}
            for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                if entry["dtype"] not in SAFETENSORS_DTYPES:
                    raise AliceError(f"{path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
                begin, end = entry["data_offsets"]
                info = TensorInfo(tuple(entry["shape"]), SAFETENSORS_DTYPES[entry["dtype"]])
                if end - begin != info.nbytes or data_start + end > size:
                    raise AliceError(f"{path}: not a valid safetensors file (tensor {key!r} is truncated)")
                infos[key] = info
                self._spans[key] = (data_start + begin, end - begin)
        except (KeyError, TypeError, ValueError) as exc:
            self._file.close()
            raise AliceError(f"{path}: not a valid safetensors file (malformed header entry: {exc})") from None
        except BaseException:
            self._file.close()
            raise
        super().__init__(str(path), infos, metadata)

    def read(self, key: str) -> torch.Tensor:
        info = self.infos[key]
        offset, nbytes = self._spans[key]
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        self._file.seek(offset)
        filled = 0
        while filled < nbytes:
            n = self._file.readinto(view[filled:])
            if not n:
                raise AliceError(f"{self.source}: file ended while reading tensor {key!r}")
            filled += n
        return buffer.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        self._file.close()


def _release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a memory-mapped tensor's storage (they re-fault from the file if touched again).
    Safe because torch maps checkpoints copy-on-write and nothing here writes to them; Linux only."""
    if not sys.platform.startswith("linux") or _LIBC is None:
        return
    storage = tensor.untyped_storage()
    start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    page = mmap.PAGESIZE
    start -= start % page
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


_MADV_DONTNEED = 4
try:
    _LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


class TorchFileReader(CheckpointReader):
    def __init__(self, path: Path) -> None:
        self._state, self._mapped = _load_pickle(path)
        infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in self._state.items()}
        super().__init__(str(path), infos, {})

    def read(self, key: str) -> torch.Tensor:
        mapped = self._state[key]
        tensor = mapped.clone(memory_format=torch.contiguous_format)
        if self._mapped:  # never on ordinary memory: dropping anonymous pages would zero them
            _release_pages(mapped)
        return tensor


class FolderReader(CheckpointReader):
    """A diffusers model folder: one or more safetensors shards read as one checkpoint."""

    def __init__(self, folder: Path, files: list[Path]) -> None:
        self._readers = [SafetensorsReader(f) for f in files]
        self._owner = {k: r for r in self._readers for k in r.infos}
        infos = {k: info for r in self._readers for k, info in r.infos.items()}
        metadata = {k: v for r in self._readers for k, v in r.metadata.items()}
        super().__init__(str(folder), infos, metadata)

    def read(self, key: str) -> torch.Tensor:
        return self._owner[key].read(key)

    def close(self) -> None:
        for r in self._readers:
            r.close()


def open_checkpoint(path: str | Path) -> CheckpointReader:
    """A lazy reader for a safetensors / .pt / .pth file or a diffusers folder (see `read_state_dict`)."""
    path, files = _locate_checkpoint(path)
    if files is not None:
        return FolderReader(path, files)
    if path.suffix in SAFETENSORS_SUFFIXES:
        return SafetensorsReader(path)
    if path.suffix in PICKLE_SUFFIXES:
        return TorchFileReader(path)
    raise AliceError(f"{path}: unsupported checkpoint type {path.suffix!r}{file_kind_hint(path)}; "
                     "use a .safetensors, .pt or .pth checkpoint")


def read_training_state(path: str | Path) -> dict:
    """A training checkpoint written by `output.save_training_state`, read without unpickling code."""
    if not Path(path).exists():
        raise AliceError(f"no training checkpoint at {path}; train first (alice train teacher/distill --out {Path(path).parent})")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AliceError(f"{path}: cannot read training checkpoint ({str(exc).splitlines()[0][:160]}); delete it to start over") from None
