"""The straight path prompt -> file, through the pipeline and the `alice` CLI, on random tiny weights."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alice_core.cli import main
from alice_core.errors import AliceError
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.video_io import read_video, read_video_metadata

from tests.bundles import random_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def pipe(bundle):
    return load_pipeline(str(bundle.folder))


def test_generate_shapes_and_determinism(pipe):
    a = pipe.generate(GenerationSettings("a red ball bouncing", seed=3))
    b = pipe.generate(GenerationSettings("a red ball bouncing", seed=3))
    c = pipe.generate(GenerationSettings("a red ball bouncing", seed=4))
    assert a.frames.shape == (9, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert set(a.timings) == {"text_encoding", "sampling", "decoding"}


def test_prompt_changes_the_video(pipe):
    a = pipe.generate(GenerationSettings("a red ball bouncing", seed=3))
    b = pipe.generate(GenerationSettings("a blue square moving left", seed=3))
    assert not np.array_equal(a.frames, b.frames)


def test_teacher_sampler_runs_its_steps(pipe):
    steps = []
    video = pipe.generate(GenerationSettings("a cat", sampler="teacher"), progress=lambda d, n, x: steps.append((d, n)))
    assert steps[-1] == (6, 6) and len(steps) == 6  # the bundle's default teacher step count
    assert video.settings.guidance == 3.0


@pytest.mark.parametrize(
    "change,message",
    [
        ({"frames": 10}, "frames must be 4k\\+1"),
        ({"width": 30}, "width must be a multiple of 8"),
        ({"height": 0}, "height must be a multiple of 8"),
        ({"steps": 5}, "steps must be 1..4"),
        ({"steps": 0}, "steps must be 1..4"),
        ({"sampler": "euler"}, "unknown sampler"),
        ({"prompt": "  "}, "prompt is empty"),
    ],
)
def test_bad_settings_name_the_fix(pipe, change, message):
    settings = GenerationSettings(**{"prompt": "a red ball", **change})
    with pytest.raises(AliceError, match=message):
        pipe.resolve(settings)


def test_cli_writes_mp4_with_metadata(bundle, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["generate", "a green triangle sliding up", "-o", str(out), "--model", str(bundle.folder), "--seed", "11", "--frames", "13", "--width", "48"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "sampling" in printed and "decoding" in printed and "text encoding" in printed
    frames, fps = read_video(out)
    assert frames.shape == (13, 32, 48, 3) and fps == pytest.approx(8)
    meta = read_video_metadata(out)
    assert meta["prompt"] == "a green triangle sliding up"
    assert str(meta["seed"]) == "11" and str(meta["steps"]) == "4" and meta["sampler"] == "rcm"
    assert meta["model"] == "random-test"


@pytest.mark.parametrize("suffix", [".webm", ".gif"])
def test_cli_other_formats(bundle, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    assert main(["generate", "a ball", "-o", str(out), "--model", str(bundle.folder)]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (9, 32, 32, 3)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--frames", "10"], "frames must be 4k+1"),
        (["--width", "50"], "width must be a multiple of 8, got 50; use --width 48"),
        (["--steps", "7"], "steps must be 1..4"),
        (["--model", "/nonexistent/model.safetensors"], "not found"),
    ],
)
def test_cli_bad_input_one_line_nonzero_no_file(bundle, tmp_path, capsys, args, message):
    out = tmp_path / "bad.mp4"
    argv = ["generate", "a ball", "-o", str(out), "--model", str(bundle.folder), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_cli_wrong_architecture_file(tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "vae_not_dit.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(4, 3, 3, 3, 3)}, str(bad))
    out = tmp_path / "x.mp4"
    assert main(["generate", "a ball", "-o", str(out), "--model", str(bad), "--vae", str(bad), "--text-encoder", "minilm"]) == 2
    err = capsys.readouterr().err
    assert "not a Wan DiT checkpoint" in err and str(bad) in err
    assert not out.exists()


def test_cli_refuses_to_overwrite(bundle, tmp_path, capsys):
    out = tmp_path / "exists.mp4"
    out.write_bytes(b"keep me")
    assert main(["generate", "a ball", "-o", str(out), "--model", str(bundle.folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_console_script_runs(bundle, tmp_path):
    out = tmp_path / "cli.gif"
    proc = subprocess.run(
        [sys.executable, "-m", "alice_core", "generate", "a ball", "-o", str(out), "--model", str(bundle.folder)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_cli_lora_flag_changes_the_video_and_reports(bundle, tmp_path, capsys):
    from tests.test_nodes import write_lora

    lora = tmp_path / "style.safetensors"
    write_lora(lora, dim=32, seed=3, rank=2)
    plain, styled = tmp_path / "plain.gif", tmp_path / "styled.gif"
    assert main(["generate", "a ball", "-o", str(plain), "--model", str(bundle.folder)]) == 0
    assert main(["generate", "a ball", "-o", str(styled), "--model", str(bundle.folder), "--lora", f"{lora}:4"]) == 0
    err = capsys.readouterr().err
    assert "matched" in err.lower()
    assert not np.array_equal(read_video(plain)[0], read_video(styled)[0])
    assert main(["generate", "a ball", "-o", str(tmp_path / "x.gif"), "--model", str(bundle.folder), "--lora", f"{lora}:strong"]) == 2
    assert "strength must be a number" in capsys.readouterr().err
    # Every video records its LoRAs, as the app's do.
    meta = read_video_metadata(styled)
    assert (meta["lora"], meta["lora_strength"]) == ("style.safetensors", 4.0)
    assert "lora" not in read_video_metadata(plain)


def test_cli_reads_only_the_network_of_the_sampler_it_runs(bundle, tmp_path, monkeypatch):
    # Start-up time: one DiT file read, not both; with a LoRA (it may be for the other network) both are.
    import alice_core.loading.dit as dit_loading
    from tests.test_nodes import write_lora

    read, load_dit = [], dit_loading.load_dit
    monkeypatch.setattr(dit_loading, "load_dit",
                        lambda path, **kw: read.append(Path(path).name) or load_dit(path, **kw))
    lora = tmp_path / "style.safetensors"
    write_lora(lora, dim=32, seed=3, rank=2)
    runs = {(): ["dit_rcm.safetensors"], ("--sampler", "teacher", "--steps", "2"): ["dit_teacher.safetensors"],
            ("--lora", str(lora)): ["dit_rcm.safetensors", "dit_teacher.safetensors"]}
    for i, (flags, files) in enumerate(runs.items()):
        read.clear()
        out = tmp_path / f"{i}.gif"
        assert main(["generate", "a ball", "-o", str(out), "--model", str(bundle.folder), *flags]) == 0
        assert sorted(read) == files


def test_cli_lora_that_matches_nothing_is_an_error(bundle, tmp_path, capsys):
    from safetensors.torch import save_file

    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"text_model.layer.0.lora_A.weight": torch.zeros(2, 4)}, str(unrelated))
    out = tmp_path / "x.gif"
    assert main(["generate", "a ball", "-o", str(out), "--model", str(bundle.folder), "--lora", str(unrelated)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"alice: error: {unrelated}: none of its 1 keys fit 'random-test'; use a LoRA made for this model "
                   "(same Wan architecture and size)")
    assert not out.exists()


def test_one_front_door_whole_and_staged_give_the_same_video(bundle):
    """diffusers-style stages: prompt embeddings, start latents, output_type="latent", then decode."""
    pipe = load_pipeline(str(bundle.folder))
    for sampler in ("rcm", "teacher"):
        settings = GenerationSettings("a blue square moving left", seed=5, sampler=sampler, steps=2)
        whole = pipe(settings)
        # The whole path encodes the negative prompt only for the teacher's guidance, in one batch with the prompt.
        conditioning = pipe.encode_prompts(settings.prompt, "" if sampler == "teacher" else None)
        latents = pipe.sample(settings, conditioning)
        assert torch.equal(latents, whole.latents)
        assert np.array_equal(pipe.decode(latents), whole.frames)
        only_latents = pipe(settings, conditioning=conditioning, output_type="latent")
        assert only_latents.frames is None and torch.equal(only_latents.latents, latents)
        # Start latents: the seed's own noise gives the same result; other noise another one.
        noise = torch.randn(pipe.latent_shape(pipe.resolve(settings)), generator=torch.Generator().manual_seed(5))
        assert torch.equal(pipe.sample(settings, conditioning, latents=noise), latents)
        assert not torch.equal(pipe.sample(settings, conditioning, latents=noise * 0.5), latents)
    with pytest.raises(AliceError, match="start latents have shape"):
        pipe.sample(settings, conditioning, latents=noise[:, :, :1])
    with pytest.raises(AliceError, match="output_type must be 'video' or 'latent'"):
        pipe(settings, output_type="pil")


def test_model_defaults_are_typed_and_checked(tmp_path):
    from alice_core.bundle import ModelBundle, ModelDefaults

    tiny = ModelBundle.read(Path(__file__).resolve().parents[1] / "alice_core" / "bundled" / "alice-tiny")
    assert isinstance(tiny.defaults, ModelDefaults)
    assert (tiny.defaults.width, tiny.defaults.frames, tiny.defaults.fps, tiny.defaults.shift) == (32, 9, 8, 3.0)
    assert ModelDefaults().frames == 81 and ModelDefaults().sampler_for(["teacher"]) == "teacher"
    with pytest.raises(AliceError, match=r"defaults: unknown key\(s\) frame; known keys: sampler"):
        ModelDefaults.from_dict({"frame": 9})
    with pytest.raises(AliceError, match="defaults.width must be int, got '32'"):
        ModelDefaults.from_dict({"width": "32"})
    with pytest.raises(AliceError, match="defaults.sampler must be one of rcm, teacher"):
        ModelDefaults.from_dict({"sampler": "euler"})
