"""Video files: round trips per format, metadata, atomic no-overwrite writes, cleanup on failure."""

import os
import stat

import numpy as np
import pytest
import torch

from alice_core import video_io
from alice_core.loading import output
from alice_core.errors import AliceError
from alice_core.video_io import read_video, read_video_metadata, unique_path, write_video

METADATA = {
    "prompt": 'a "cat" in Zürich — 猫 = ; # \\ end\nsecond line',
    "seed": 42,
    "steps": 30,
    "guidance": 5.5,
    "sampler": "unipc",
    "model": "wan2.1-t2v-1.3b",
}
# Mean absolute error (0..255) of the decoded clip. Measured at crf 19 on 64x64: mp4 1.7, webm VP9 1.8,
# webm VP8 2.0 (mostly 4:2:0 chroma on the hard block edges: crf 10 gives the same). Odd sizes (33x47):
# mp4 2.1, webm 4.2 (VP9 even lossless gives 4.1 there: it is the odd-size chroma, not the codec).
LOSSY_TOLERANCE = 3.0
ODD_SIZE_TOLERANCE = 6.0


def moving_square(frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
    """A blocky 64-colour background with a red square moving right: few colours, so GIF is lossless."""
    yy, xx = np.mgrid[0:height, 0:width]
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 0] = (xx // 8) * 32
    video[..., 1] = (yy // 8) * 32
    video[..., 2] = 100
    for i in range(frames):
        video[i, 20:36, 3 * i : 3 * i + 16] = (255, 0, 0)
    return video


def directory_names(path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_lossy_round_trip(tmp_path, suffix):
    video = moving_square()
    out = write_video(video, tmp_path / f"clip{suffix}", fps=16, metadata=METADATA)
    frames, fps = read_video(out)
    assert frames.shape == video.shape and frames.dtype == np.uint8
    assert fps == 16.0
    assert np.abs(frames.astype(float) - video).mean() < LOSSY_TOLERANCE
    # The moving square is where it should be in every frame.
    for i in (0, 8, 16):
        assert frames[i, 24:32, 3 * i + 4 : 3 * i + 12, 0].mean() > 230
    assert read_video_metadata(out) == METADATA
    assert directory_names(tmp_path) == [f"clip{suffix}"]


def test_container_tags_per_key(tmp_path):
    """Besides the JSON comment, every key is a tag of its own (what players and tag tools show)."""
    out = write_video(moving_square(3), tmp_path / "clip.webm", fps=8, metadata={"seed": 7, "sampler": "euler"})
    tags = video_io._container_tags(out)
    assert tags["seed"] == "7" and tags["sampler"] == "euler"


def test_gif_round_trip_exact(tmp_path):
    video = moving_square()
    out = write_video(video, tmp_path / "clip.gif", fps=16, metadata=METADATA)
    frames, fps = read_video(out)
    assert frames.shape == video.shape
    assert np.array_equal(frames, video)  # 65 colours fit the shared palette: exact
    assert fps == pytest.approx(1000 / 60)  # 16 fps -> 6 cs delay -> 16.67 fps
    assert read_video_metadata(out) == METADATA


def test_gif_static_frames_keep_their_count(tmp_path):
    """Pillow merges identical frames; read_video expands them again."""
    video = moving_square(6)
    video[2:5] = video[1]  # frames 1..4 identical
    frames, _ = read_video(write_video(video, tmp_path / "still.gif", fps=10))
    assert np.array_equal(frames, video)
    frames, _ = read_video(write_video(np.repeat(video[:1], 5, axis=0), tmp_path / "frozen.gif", fps=10))
    assert frames.shape[0] == 5


def test_torch_float_frames_and_odd_sizes(tmp_path):
    video = moving_square(5, 33, 47)
    as_float = torch.from_numpy(video).float() / 255
    as_float[0, 0, 0] = 1.2  # slightly out of range values are clamped, not an error
    for suffix in (".mp4", ".webm", ".gif"):
        frames, _ = read_video(write_video(as_float, tmp_path / f"odd{suffix}", fps=8))
        if suffix == ".mp4":  # H.264 4:2:0 needs even sizes: padded by repeating the edge
            assert frames.shape == (5, 34, 48, 3)
            frames = frames[:, :33, :47]
        assert frames.shape == (5, 33, 47, 3)
        assert np.abs(frames.astype(float) - video).mean() < ODD_SIZE_TOLERANCE


def test_webm_vp8_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "_has_encoder", lambda exe, name: False)
    video = moving_square(5)
    frames, fps = read_video(write_video(video, tmp_path / "vp8.webm", fps=8, metadata={"seed": 1}))
    assert frames.shape == video.shape and fps == 8.0
    assert np.abs(frames.astype(float) - video).mean() < LOSSY_TOLERANCE
    assert read_video_metadata(tmp_path / "vp8.webm") == {"seed": 1}


def test_existing_target_is_refused_and_untouched(tmp_path):
    target = tmp_path / "taken.mp4"
    target.write_bytes(b"precious")
    with pytest.raises(AliceError, match="already exists; choose another output path or delete it"):
        write_video(moving_square(3), target, fps=8)
    assert target.read_bytes() == b"precious"
    assert directory_names(tmp_path) == ["taken.mp4"]


def test_target_created_during_encoding_is_not_overwritten(tmp_path, monkeypatch):
    """The final rename re-checks: a file that appears while encoding wins, and the temp file goes."""
    target = tmp_path / "race.gif"
    real_write_gif = video_io._write_gif

    def write_then_race(*args):
        real_write_gif(*args)
        target.write_bytes(b"other writer")

    monkeypatch.setattr(video_io, "_write_gif", write_then_race)
    with pytest.raises(AliceError, match="already exists"):
        write_video(moving_square(3), target, fps=8)
    assert target.read_bytes() == b"other writer"
    assert directory_names(tmp_path) == ["race.gif"]


def test_no_hardlink_filesystem_fallback(tmp_path, monkeypatch):
    """Neither renameat2 nor hard links (FAT, some network mounts): the name is claimed exclusively, then filled."""
    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(output, "_rename_noreplace", lambda src, dst: False)
    monkeypatch.setattr(output.os, "link", no_links)
    out = write_video(moving_square(3), tmp_path / "a.gif", fps=8)
    assert read_video(out)[0].shape[0] == 3
    (tmp_path / "whatever").write_bytes(b"x")
    with pytest.raises(AliceError, match="already exists"):
        output.place(tmp_path / "whatever", out)
    assert read_video(out)[0].shape[0] == 3
    assert directory_names(tmp_path) == ["a.gif", "whatever"]


def test_ffmpeg_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "_codec_args", lambda suffix, crf: ["-c:v", "no_such_codec", "-f", "mp4"])
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        write_video(moving_square(), tmp_path / "broken.mp4", fps=16)
    assert directory_names(tmp_path) == []


def test_ffmpeg_dying_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    """A fake ffmpeg that writes part of the output file, stops reading stdin and fails."""
    fake = tmp_path / "bin" / "fake-ffmpeg"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor last; do :; done\nhead -c 1000 > /dev/null\necho partial > "$last"\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(video_io, "_ffmpeg_exe", lambda: str(fake))
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="exit 3"):
        write_video(moving_square(40, 128, 128), out_dir / "clip.mp4", fps=16)
    assert directory_names(out_dir) == []


def test_gif_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    from PIL import Image

    def fail_after_partial_write(image, f, **kwargs):
        f.write(b"GIF89a partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_after_partial_write)
    with pytest.raises(OSError, match="disk full"):
        write_video(moving_square(3), tmp_path / "clip.gif", fps=8)
    assert directory_names(tmp_path) == []


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((4, 8, 8), np.uint8), "shape"),
        (np.zeros((4, 8, 8, 4), np.uint8), "shape"),
        (np.zeros((0, 8, 8, 3), np.uint8), "shape"),
        (np.zeros((4, 8, 8, 3), np.int32), "uint8"),
        (torch.full((2, 8, 8, 3), float("nan")), "NaN"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_invalid_frames(tmp_path, frames, match):
    with pytest.raises(AliceError, match=match):
        write_video(frames, tmp_path / "x.mp4", fps=8)
    assert directory_names(tmp_path) == []


def test_invalid_arguments(tmp_path):
    video = moving_square(2, 8, 8)
    with pytest.raises(AliceError, match=r"\.mp4, \.webm, \.gif"):
        write_video(video, tmp_path / "x.avi", fps=8)
    with pytest.raises(AliceError, match="fps"):
        write_video(video, tmp_path / "x.mp4", fps=0)
    with pytest.raises(AliceError, match="at most 50 fps"):
        write_video(video, tmp_path / "x.gif", fps=60)
    with pytest.raises(AliceError, match="crf"):
        write_video(video, tmp_path / "x.mp4", fps=8, crf=70)
    with pytest.raises(AliceError, match="metadata key"):
        write_video(video, tmp_path / "x.mp4", fps=8, metadata={"bad key": 1})
    with pytest.raises(AliceError, match="str, int or float"):
        write_video(video, tmp_path / "x.mp4", fps=8, metadata={"seed": [1]})
    with pytest.raises(AliceError, match="no video file"):
        read_video(tmp_path / "missing.mp4")
    assert directory_names(tmp_path) == []


def test_unreadable_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(AliceError, match="could not read"):
        read_video(junk)
    with pytest.raises(AliceError, match="could not read"):
        read_video_metadata(junk)


def test_unique_path(tmp_path):
    assert unique_path(tmp_path / "not-yet", "alice", ".mp4") == tmp_path / "not-yet" / "alice_00001.mp4"
    assert unique_path(tmp_path, "alice", "mp4") == tmp_path / "alice_00001.mp4"
    for name in ("alice_00001.mp4", "alice_00007.mp4", "alice_00009.gif", "other_00050.mp4", "alice_x.mp4"):
        (tmp_path / name).touch()
    assert unique_path(tmp_path, "alice", ".mp4") == tmp_path / "alice_00008.mp4"
    assert unique_path(tmp_path, "alice", ".gif") == tmp_path / "alice_00010.gif"
    with pytest.raises(AliceError):
        unique_path(tmp_path, "sub/alice", ".mp4")


def test_foreign_file_metadata(tmp_path):
    """Files not written by write_video: container tags as strings, GIF comment as text."""
    out = write_video(moving_square(2), tmp_path / "a.mp4", fps=8, metadata={"title": "x"})
    assert video_io._ffmetadata_entries("a=1\\=2\\\nb\nc=\\;") == ["a=1=2\nb", "c=;"]
    from PIL import Image

    gif = tmp_path / "plain.gif"
    Image.new("RGB", (4, 4)).save(gif, comment="hello")
    assert read_video_metadata(gif) == {"comment": "hello"}
    assert read_video(gif)[0].shape == (1, 4, 4, 3)
    assert read_video_metadata(out) == {"title": "x"}
