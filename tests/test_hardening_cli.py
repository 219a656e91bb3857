"""What a careless user meets through the installed `alice` command: each case a one-line error that names the fix,
exit 2, no traceback, and checks that need no weights come before any loading."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.pipeline import GenerationSettings
from tests.bundles import random_tiny_bundle
from tests.hardening import assert_one_line_error, run_alice


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def generate(bundle, out: Path, *flags: str, **kw) -> subprocess.CompletedProcess:
    return run_alice("generate", "a ball", "-o", str(out), "--model", str(bundle.folder), *flags, cwd=out.parent, **kw)


def test_help_of_every_command_prints():
    for args in (["--help"], ["generate", "--help"], ["bench", "--help"], ["convert", "--help"], ["finetune", "--help"]):
        proc = run_alice(*args)
        assert proc.returncode == 0 and "usage: alice" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("flags, words", [
    (["--sampler", "teacher", "--guidance", "nan"], ["--guidance", "finite"]),
    (["--sampler", "teacher", "--guidance", "inf"], ["--guidance", "finite"]),
    (["--sampler", "teacher", "--shift", "nan"], ["--shift", "finite"]),
    (["--sigma-max", "nan"], ["--sigma-max", "finite"]),
    (["--sigma-max", "-1"], ["--sigma-max", "greater than 0"]),
    (["--width", "100000"], ["--width 4096 or less"]),
    (["--frames", "100001"], ["--frames 1025 or less"]),
    (["--device", "nonsense"], ["--device", "use one of cpu"]),
    (["--lora", "missing.safetensors"], ["--lora", "not found"]),
])
def test_bad_flags_are_one_line_errors(bundle, tmp_path, flags, words):
    out = tmp_path / "o.gif"
    assert_one_line_error(generate(bundle, out, *flags), *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_build_names_the_fix(bundle, tmp_path):
    assert_one_line_error(generate(bundle, tmp_path / "o.gif", "--device", "cuda"), "--device cpu")


def test_nul_in_a_prompt_is_refused_before_generating(bundle, tmp_path):
    from alice_core.pipeline import load_pipeline  # a NUL cannot travel in argv: the API and the app pass it

    pipe = load_pipeline(str(bundle.folder))
    started = []
    with pytest.raises(AliceError, match="control character"):
        pipe.generate(GenerationSettings(prompt="a red\x00ball"), progress=lambda *a: started.append(a))
    assert started == []  # refused before the first sampling step


def test_memory_estimate_refuses_and_names_what_to_lower(bundle, tmp_path):
    proc = generate(bundle, tmp_path / "o.gif", "--width", "4096", "--height", "4096", "--frames", "1025")
    line = assert_one_line_error(proc, "GiB", "--width/--height", "--frames")
    assert "4096x4096" in line


def test_size_and_frame_errors_come_before_loading_weights(bundle, tmp_path, monkeypatch, capsys):
    import alice_core.pipeline as pipeline
    from alice_core.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the settings were checked")

    monkeypatch.setattr(pipeline, "load_pipeline", no_loading)
    for flags, says in ((["--frames", "10"], "--frames 9"), (["--width", "33"], "--width 32"),
                        (["--steps", "9"], "steps must be 1..4"), (["--sampler", "teacher", "--shift", "0"], "shift")):
        assert main(["generate", "a ball", "-o", str(tmp_path / "o.gif"), "--model", str(bundle.folder), *flags]) == 2
        assert says in capsys.readouterr().err


def test_read_only_output_folder(bundle, tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses it too
        folder = Path("/sys")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    proc = run_alice("generate", "a ball", "-o", str(folder / "o.gif"), "--model", str(bundle.folder))
    assert_one_line_error(proc, "cannot write to", "-o")


@pytest.mark.parametrize("length", [242, 250, 255, 300])
def test_long_output_names(bundle, tmp_path, length):
    out = tmp_path / ("n" * (length - 4) + ".gif")
    proc = generate(bundle, out)
    assert_one_line_error(proc, "-o", "at most 239")
    assert list(tmp_path.iterdir()) == []


def test_no_such_user_folder(bundle, tmp_path):
    proc = run_alice("generate", "a ball", "-o", "~nosuchuser_alice/o.gif", "--model", str(bundle.folder), cwd=tmp_path)
    assert_one_line_error(proc, "no such user", "full path")


def test_corrupt_lora_and_lora_metadata_that_is_a_list(bundle, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_one_line_error(generate(bundle, tmp_path / "a.gif", "--lora", str(garbage)), "garbage.safetensors")
    from safetensors.torch import save_file

    listed = tmp_path / "listed.safetensors"
    save_file({"x": torch.zeros(1)}, str(listed), metadata={"alice_lora": json.dumps([1, 2])})
    assert_one_line_error(generate(bundle, tmp_path / "b.gif", "--lora", str(listed)), "not a JSON object")
    assert not (tmp_path / "a.gif").exists() and not (tmp_path / "b.gif").exists()


def test_bad_stored_config_through_the_cli(tmp_path):
    from safetensors.torch import save_file

    from alice_core.models.config import WanDiTConfig
    from alice_core.models.dit import WanDiT

    dit = WanDiT(WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=32))
    for meta in ("{oops", '{"dim": 32, "num_heads": 0}', '{"patch_size": 3}'):
        src = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(src), metadata={"alice_dit_config": meta})
        proc = run_alice("convert", str(src), str(tmp_path / "out.safetensors"), "--to", "official", cwd=tmp_path)
        assert_one_line_error(proc, "alice_dit_config")
        src.unlink()


def test_finetune_nan_learning_rate(bundle, tmp_path):
    (tmp_path / "clips").mkdir()
    proc = run_alice("finetune", "--clips", str(tmp_path / "clips"), "-o", str(tmp_path / "l.safetensors"),
                     "--model", str(bundle.folder), "--teacher-lr", "nan", cwd=tmp_path)
    assert_one_line_error(proc, "--teacher-lr", "finite")


# -- full disks: a tiny tmpfs in a private mount namespace ---------------------------------------------------------
def _full_disk_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Run `alice ARGS` where {disk} is a 64 KB tmpfs already filled to the last byte; skips where the machine
    cannot make one (no `unshare`, or user namespaces disabled)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare for a private tmpfs")
    alice = run_alice.__globals__["ALICE"]
    fill = f"dd if=/dev/zero of={disk}/fill bs=4k >/dev/null 2>&1; "
    command = " ".join(shlex.quote(a.replace("{disk}", str(disk))) for a in args)
    script = f"mount -t tmpfs -o size=64k tmpfs {disk} && {fill} exec {alice} {command}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {disk}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.decode()[-200:]}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_full_disk_generate(bundle, tmp_path, suffix):
    proc = _full_disk_run(tmp_path, "generate", "a ball", "-o", "{disk}/o" + suffix, "--model", str(bundle.folder))
    assert_one_line_error(proc, "space")


def test_full_disk_convert(tmp_path):
    from tests.test_formats import random_state, write_variant

    src, _ = write_variant(random_state(), "official", tmp_path / "src")
    proc = _full_disk_run(tmp_path, "convert", str(src), "{disk}/out.safetensors", "--to", "official")
    assert_one_line_error(proc, "space")


def test_node_sampler_refuses_an_oversized_run_in_node_words(bundle):
    from alice_core.limits import NODE_WORDS
    from alice_core.pipeline import Conditioning, load_pipeline

    model = load_pipeline(str(bundle.folder), parts=("dits",))
    cond = Conditioning("a ball", "", torch.zeros(1, 32, 384), torch.zeros(1, 32, 384))
    with pytest.raises(AliceError) as err:
        model.sample(GenerationSettings(prompt="a ball", sampler="rcm", width=4096, height=4096, frames=1025), cond,
                     memory_words=NODE_WORDS)
    assert "width/height (now 4096x4096)" in str(err.value) and "--" not in str(err.value)


def test_full_disk_finetune(bundle, tmp_path):
    from tests.test_finetune import _clips, _write_clip_folder

    clips = _write_clip_folder(tmp_path / "clips", _clips(2))
    proc = _full_disk_run(tmp_path, "finetune", "--model", str(bundle.folder), "--clips", str(clips),
                          "-o", "{disk}/mine.safetensors", "--rank", "2", "--teacher-steps", "2", "--student-steps", "2",
                          "--batch-size", "1", "--checkpoint-every", "1", "--threads", "1")
    assert_one_line_error(proc, "space")
