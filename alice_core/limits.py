"""Limits checked before any weight is loaded: finite numbers, upper bounds on sizes, prompt text, the device, and
the memory a generation will need against what the device has free."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AliceError
from .models.config import WanDiTConfig

MAX_SIDE = 4096  # pixels; Wan models are trained up to 1280x720
MAX_FRAMES = 1025  # 4k+1; Wan2.1 makes 81
GiB = 1024**3
# Bytes per DiT weight for each precision (NF4: 4 bits plus a bf16 scale per 64 and the bf16 layers outside blocks).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8_e4m3fn": 1.0, "fp8_e5m2": 1.0, "nf4": 0.6}
ACTIVATION_BYTES = {"fp32": 4}  # everything else computes in 16 bits
CLI_WORDS = ("--width/--height", "--frames", "--precision fp8_e4m3fn")
NODE_WORDS = ("width/height", "frames", "an fp8 precision")
APP_WORDS = ("the size", "the frame count", "an fp8 precision")


def check_finite(value: float | None, flag: str, positive: bool = False) -> None:
    """Refuse NaN / inf (and, with `positive`, values <= 0) for a numeric setting, naming its flag."""
    if value is None:
        return
    if not math.isfinite(value):
        raise AliceError(f"{flag} must be a finite number, got {value}")
    if positive and value <= 0:
        raise AliceError(f"{flag} must be greater than 0, got {value}")


def check_bounds(width: int, height: int, frames: int) -> None:
    for flag, value, top in (("--width", width, MAX_SIDE), ("--height", height, MAX_SIDE), ("--frames", frames, MAX_FRAMES)):
        if value > top:
            raise AliceError(f"{flag} {value} is above the limit of {top}; use {flag} {top} or less")


def check_prompt_text(text: str | None, flag: str) -> None:
    """A NUL or other control character cannot be stored in the video's metadata: refuse it before generating."""
    bad = next((c for c in text or "" if ord(c) < 32 and c not in "\t\n\r"), None)
    if bad is not None:
        raise AliceError(f"{flag} contains the control character {bad!r}; remove it")


def parse_device(name: str | None, flag: str = "--device") -> torch.device:
    """A torch device that exists here, or an AliceError naming the flag and what does exist."""
    choices = "cpu" + (", cuda" if torch.cuda.is_available() else "") + (", mps" if torch.backends.mps.is_available() else "")
    try:
        device = torch.device(name or "cpu")
    except (RuntimeError, TypeError):
        raise AliceError(f"{flag} {name!r} is not a device; use one of {choices}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise AliceError(f"{flag} {name}: {build}; use {flag} cpu (or install a CUDA torch, see README: GPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AliceError(f"{flag} {name}: there are {torch.cuda.device_count()} CUDA devices; use cuda:0..")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise AliceError(f"{flag} {name}: MPS is not available here; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise AliceError(f"{flag} {name!r}: Alice runs on {choices}")
    return device


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: the GPU's free memory, or the system's MemAvailable for the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


@dataclass(frozen=True)
class GenerationShape:
    """What a generation's memory depends on, known before any weight is loaded."""

    dit: WanDiTConfig
    dit_count: int  # distinct DiT networks held (a bundle's student and teacher: 2)
    other_weight_bytes: int  # text encoder and autoencoder files
    temporal_stride: int
    spatial_stride: int
    wan_vae: bool  # a convolutional decoder (the space-to-depth latent decodes by a reshape)


def dit_parameters(config: WanDiTConfig) -> int:
    from .models.dit import meta_state_dict

    return sum(t.numel() for t in meta_state_dict(config).values())


def estimate_generation_bytes(shape: GenerationShape, precision: str, width: int, height: int, frames: int,
                              decode: bool = True) -> dict[str, int]:
    """Peak bytes by part: weights; one DiT block's activations over all tokens (the attention kernel works in
    tiles, so it adds no [L, L] scores); the VAE decoding one latent frame at full resolution; the frames
    (decode=False: sampling only, as a node graph's sampler)."""
    cfg = shape.dit
    act = ACTIVATION_BYTES.get(precision, 2)
    latent_frames = 1 + (frames - 1) // shape.temporal_stride
    tokens = latent_frames * (height // shape.spatial_stride // cfg.patch_size[1]) * (width // shape.spatial_stride // cfg.patch_size[2])
    parts = {
        "weights": int(shape.dit_count * dit_parameters(cfg) * WEIGHT_BYTES.get(precision, 4.0)) + shape.other_weight_bytes,
        "activations": tokens * (10 * cfg.dim + 2 * cfg.ffn_dim) * act,
        # Wan VAE decoder: ~96 channels at full size, 4 output frames per latent frame, about 6 live copies.
        "decoding": (4 * height * width * 96 * 6 * 4) if shape.wan_vae and decode else 0,
        # float32 [3, F, H, W] decoder output, its clamped/scaled copy, and the uint8 frames.
        "frames": frames * height * width * 3 * (4 + 4 + 1) if decode else 0,
    }
    return parts


def check_generation_memory(shape: GenerationShape, precision: str, width: int, height: int, frames: int,
                            device: torch.device, decode: bool = True,
                            words: tuple[str, str, str] = CLI_WORDS) -> dict[str, int]:
    """The estimate, or an AliceError naming what to lower (in `words`: the size, frames and precision settings
    as the caller's user knows them) when it exceeds what `device` has free."""
    parts = estimate_generation_bytes(shape, precision, width, height, frames, decode)
    need, have = sum(parts.values()), available_bytes(device)
    if need > 0.9 * have:
        detail = ", ".join(f"{k} {v / GiB:.1f}" for k, v in parts.items())
        size, count, quantised = words
        quantise = "" if precision in ("fp8_e4m3fn", "fp8_e5m2", "nf4") else f", {quantised}"
        raise AliceError(
            f"this generation needs about {need / GiB:.1f} GiB ({detail}) but the {device.type} has "
            f"{have / GiB:.1f} GiB free; lower {size} (now {width}x{height}) or {count} (now {frames})"
            f"{quantise}, or use a larger device"
        )
    return parts


# Temporary names are the final name plus at most this many characters (".NAME.<8 hex>.tmp.SUFFIX").
TEMP_NAME_EXTRA = 16


def expand_path(raw: str | Path, flag: str) -> Path:
    """`~` and `~user` expanded, with an error naming the flag when there is no such user."""
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # Python raises it for ~user with no such user
        raise AliceError(f"{flag} {raw}: no such user's home folder; write the full path") from None


def check_output_location(raw: str | Path, flag: str) -> Path:
    """The output path, once its folder exists, takes a file of this name (with its temporary twin's longer name)
    and can be written to (a probe file is created and removed): checked before any work is done."""
    path = expand_path(raw, flag)
    folder = path.parent
    if not folder.is_dir():
        raise AliceError(f"output folder {folder} does not exist; create it first or pick another {flag} path")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    limit = name_max - TEMP_NAME_EXTRA
    if len(os.fsencode(path.name)) > limit:
        raise AliceError(f"{flag} file name is {len(os.fsencode(path.name))} bytes; use a name of at most {limit}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".alice-probe-"):
            pass
    except OSError as exc:
        raise AliceError(f"cannot write to {folder} ({exc.strerror}); pick a folder you can write to for {flag}") from None
    return path
