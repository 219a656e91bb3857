"""Video files: write mp4 / webm / gif with generation metadata, atomically and never over an existing file.

mp4 and webm go through the ffmpeg binary bundled with imageio-ffmpeg (raw rgb24 frames on its stdin), gif
through Pillow (imported by the gif functions only: ~10 ms of an mp4 run's start). Metadata (prompt, seed, steps,
...) is stored as JSON: in the container's `comment` tag for mp4/webm (plus one tag per key, for tools that show
tags), in the GIF comment extension for gif.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from .errors import AliceError
from .loading.leftovers import die_with_parent
from .loading.output import atomic_output, exists_message

SUFFIXES = (".mp4", ".webm", ".gif")
MAX_GIF_FPS = 50  # GIF delays are whole centiseconds and browsers slow down delays under 2 cs

# RGB -> YUV with the BT.709 matrix and say so in the stream, which is what players assume for video.
_BT709 = [
    "-vf", "scale=out_color_matrix=bt709:out_range=tv",
    "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
]
_METADATA_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

Metadata = dict[str, str | int | float]


def write_video(
    frames: np.ndarray | torch.Tensor,
    path: str | Path,
    fps: int,
    metadata: Metadata | None = None,
    crf: int = 19,
) -> Path:
    """Write frames [F, H, W, 3] (uint8 0..255, or float 0..1 which is clamped) to path; returns the path.

    The format follows the suffix: .mp4 (H.264 yuv420p; odd sizes are padded to even by repeating the
    last row/column), .webm (VP9, or VP8 if this ffmpeg lacks VP9), .gif (one shared palette, loops forever,
    fps rounded to whole-centisecond frame delays). crf is the quality for mp4/webm (lower is better).
    The file appears complete or not at all; an existing file is never overwritten.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise AliceError(f"cannot write video '{path.name}': the file name must end in {', '.join(SUFFIXES)}")
    video = _as_uint8_frames(frames)
    _check_fps(fps, suffix)
    _check_crf(crf, suffix)
    metadata = _checked_metadata(metadata)
    if os.path.lexists(path):
        raise AliceError(exists_message(path))

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:  # a hidden name ending in the real suffix, so ffmpeg sees the format
        if suffix == ".gif":
            _write_gif(video, tmp, fps, metadata)
        else:
            _encode_with_ffmpeg(video, tmp, fps, metadata, crf, suffix)
    return path


def unique_path(directory: str | Path, prefix: str, suffix: str) -> Path:
    """directory/prefix_00001.mp4-style name one past the highest counter already there (ComfyUI-like).

    Two processes asking at the same moment can get the same name; write_video then refuses the second
    rather than overwriting the first.
    """
    directory = Path(directory)
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    if not prefix or "/" in prefix or "\\" in prefix:
        raise AliceError(f"output prefix '{prefix}' must be a plain file name start, without folders")
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}")
    names = os.listdir(directory) if directory.is_dir() else []
    highest = max((int(m.group(1)) for m in map(pattern.fullmatch, names) if m), default=0)
    return directory / f"{prefix}_{highest + 1:05d}{suffix}"


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode a video to (frames uint8 [F, H, W, 3], fps)."""
    path = _existing(path)
    if path.suffix.lower() == ".gif":
        return _read_gif(path)
    return _decode_with_ffmpeg(path)


def read_video_metadata(path: str | Path) -> dict:
    """The metadata dict write_video stored (types preserved, from the JSON comment).

    For files written elsewhere: a JSON-object comment as is, else the container tags as strings
    (gif: {"comment": text}).
    """
    path = _existing(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        with Image.open(path) as image:
            comment = image.info.get("comment", b"").decode("utf-8", errors="replace")
        stored = _json_object(comment)
        if stored is not None and "metadata" in stored:
            return stored["metadata"]
        return {"comment": comment} if comment else {}
    tags = _container_tags(path)
    stored = _json_object(tags.get("comment", ""))
    return stored if stored is not None else tags


# ---------------------------------------------------------------- checks


def _as_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.float().numpy() if frames.is_floating_point() else frames.numpy()
    if not isinstance(frames, np.ndarray):
        raise AliceError(
            f"video frames must be a numpy array or torch tensor [F, H, W, 3], got {type(frames).__name__}"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise AliceError(f"video frames must have shape [F, H, W, 3] with F, H, W >= 1, got {list(frames.shape)}")
    if np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise AliceError("video frames contain NaN or infinity; check the decoder output before saving")
        frames = np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif frames.dtype != np.uint8:
        raise AliceError(f"video frames must be uint8 (0..255) or float (0..1), got {frames.dtype}")
    return np.ascontiguousarray(frames)


def _check_fps(fps: int, suffix: str) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < 1000:
        raise AliceError(f"fps must be a positive number below 1000, got {fps!r}")
    if suffix == ".gif" and fps > MAX_GIF_FPS:
        raise AliceError(f"GIF plays at most {MAX_GIF_FPS} fps, got {fps}; save as .mp4/.webm or lower the fps")


def _check_crf(crf: int, suffix: str) -> None:
    max_crf = {".mp4": 51, ".webm": 63}.get(suffix)
    if max_crf is not None and (isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= max_crf):
        raise AliceError(f"crf for {suffix} must be an integer from 0 to {max_crf} (lower is better), got {crf!r}")


def _checked_metadata(metadata: Metadata | None) -> Metadata:
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise AliceError(f"metadata key {key!r} must be letters, digits and '_', starting with a letter")
        if not isinstance(value, (str, int, float)):
            raise AliceError(f"metadata '{key}' must be a str, int or float, got {type(value).__name__}")
    return metadata


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AliceError(f"no video file at {path}; check the path")
    return path


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- writing


def _ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=None)
def _has_encoder(exe: str, name: str) -> bool:
    listing = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in listing.splitlines())


def _codec_args(suffix: str, crf: int) -> list[str]:
    if suffix == ".mp4":
        return ["-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p", *_BT709,
                "-movflags", "+faststart+use_metadata_tags", "-f", "mp4"]  # custom tags need use_metadata_tags
    if _has_encoder(_ffmpeg_exe(), "libvpx-vp9"):
        return ["-c:v", "libvpx-vp9", "-crf", str(crf), "-b:v", "0", "-deadline", "good", "-cpu-used", "2",
                "-row-mt", "1", "-pix_fmt", "yuv420p", *_BT709, "-f", "webm"]
    # VP8 is BT.601 by definition (decoders ignore tags), and its constant-quality mode needs a bitrate
    # ceiling and crf >= 4.
    return ["-c:v", "libvpx", "-crf", str(max(crf, 4)), "-b:v", "20M", "-pix_fmt", "yuv420p", "-f", "webm"]


def _encode_with_ffmpeg(video: np.ndarray, out: Path, fps: int, metadata: Metadata, crf: int, suffix: str) -> None:
    if suffix == ".mp4" and (video.shape[1] % 2 or video.shape[2] % 2):
        # H.264 4:2:0 needs even sizes: repeat the last row/column rather than add a black line.
        video = np.pad(video, ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0)), mode="edge")
    _, height, width, _ = video.shape

    tags = ["-metadata", "comment=" + json.dumps(metadata, ensure_ascii=False)]
    for key, value in metadata.items():
        if key != "comment":  # the JSON above owns the comment tag
            tags += ["-metadata", f"{key}={value}"]
    cmd = [
        _ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an", *_codec_args(suffix, crf), *tags, str(out),
    ]
    # stderr goes to a file: a pipe nobody reads while we feed stdin could fill up and stall ffmpeg.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                                preexec_fn=die_with_parent if os.name == "posix" else None)  # dies with the run
        try:
            with suppress(BrokenPipeError), proc.stdin:  # ffmpeg quit early: its exit status and log say why
                for frame in video:
                    proc.stdin.write(frame.data)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted while encoding: don't leave ffmpeg behind
                proc.kill()
                proc.wait()
        if returncode != 0:
            log.seek(0)
            lines = log.read().decode("utf-8", errors="replace").strip().splitlines()
            said = " | ".join(lines[-4:])
            if any(s in said for s in ("No space left", "Disk quota", "Read-only file system", "Permission denied")):
                raise AliceError(f"ffmpeg could not write {out.parent} ({said}); free some space or write to "
                                 "another folder")
            raise RuntimeError(f"ffmpeg failed writing {out.name} (exit {returncode}): {said}")


def _write_gif(video: np.ndarray, out: Path, fps: int, metadata: Metadata) -> None:
    from PIL import Image

    frame_ms = 10 * round(100 / fps)  # >= 20 ms since fps <= MAX_GIF_FPS
    # One palette for all frames so colours don't flicker between frames. Median cut costs ~0.7 s per
    # megapixel, so it sees up to 8 frames, subsampled to about 2**18 pixels in all.
    sample = video[np.linspace(0, len(video) - 1, min(len(video), 8)).round().astype(int)]
    stride = max(1, math.ceil(math.sqrt(sample[..., 0].size / 2**18)))
    sample = sample[:, ::stride, ::stride]
    palette = Image.fromarray(np.concatenate(sample, axis=0)).quantize(256, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE) for frame in video]
    # Pillow merges identical consecutive frames into one longer frame; frame_ms lets read_video undo that.
    comment = json.dumps({"metadata": metadata, "frame_ms": frame_ms}, ensure_ascii=True)
    with open(out, "wb") as f:
        images[0].save(
            f, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0, comment=comment
        )


# ---------------------------------------------------------------- reading


def _read_gif(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        stored = _json_object(image.info.get("comment", b"").decode("utf-8", errors="replace")) or {}
        frames, durations = [], []
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info.get("duration") or 100)  # 0 means "as fast as possible": viewers use 100 ms
    frame_ms = stored.get("frame_ms") or min(durations)
    # Expand merged (longer) frames back into frames of the base duration.
    repeats = [max(1, round(d / frame_ms)) for d in durations]
    return np.repeat(np.stack(frames), repeats, axis=0), 1000.0 / frame_ms


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, float]:
    """First video stream as raw rgb24; frame size and fps come from ffmpeg's description of its output."""
    result = subprocess.run(
        [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path),
         "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
    )
    log = result.stderr.decode("utf-8", errors="replace")
    if result.returncode != 0:
        last_line = (log.strip().splitlines() or ["no output"])[-1]
        raise AliceError(f"could not read {path} as a video ({last_line}); check that it is a complete video file")
    # Only real stream lines start with "Stream #" (metadata lines start with their key).
    output_section = log.partition("\nOutput #0")[2]
    stream = next((line for line in output_section.splitlines() if line.lstrip().startswith("Stream #")), "")
    size = re.search(r", (\d+)x(\d+)", stream)
    fps = re.search(r", (\d+(?:\.\d+)?) fps", stream)
    if not size or not fps:
        raise RuntimeError(f"could not find the frame size and fps of {path} in ffmpeg's output: {stream!r}")
    width, height = int(size[1]), int(size[2])
    frames = np.frombuffer(result.stdout, np.uint8).reshape(-1, height, width, 3).copy()  # copy: writable
    return frames, float(fps[1])


def _container_tags(path: Path) -> dict[str, str]:
    """Global tags from `ffmpeg -f ffmetadata`, keys lower-cased (Matroska stores them upper-case)."""
    result = subprocess.run(
        [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True,
    )
    if result.returncode != 0:
        last_line = (result.stderr.decode("utf-8", errors="replace").strip().splitlines() or ["no output"])[-1]
        raise AliceError(f"could not read {path} as a video ({last_line}); check that it is a complete video file")
    tags: dict[str, str] = {}
    for entry in _ffmetadata_entries(result.stdout.decode("utf-8", errors="replace")):
        if entry.startswith("["):  # first [STREAM]/[CHAPTER] section: the global tags are done
            break
        key, sep, value = entry.partition("=")
        if sep and not entry.startswith(";"):
            tags[key.lower()] = value
    return tags


def _ffmetadata_entries(text: str) -> list[str]:
    """Split ffmetadata into unescaped 'key=value' lines; '\\' escapes '=', ';', '#', '\\' and newlines."""
    entries, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "\n":
            entries.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        entries.append("".join(current))
    return entries
