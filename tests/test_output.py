"""The one writer (alice_core/loading/output.py) as every command uses it: outputs appear complete or not at all, a
run never replaces a file it did not create (even one that appears while it writes), concurrent runs use distinct
temporary names and exactly one of them wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from alice_core import hub
from alice_core.errors import AliceError
from alice_core.loading import output
from alice_core.loading.output import OutputTensor, atomic_output, write_safetensors
from alice_core.train.finetune import FinetuneConfig
from alice_core.train.finetune_job import FinetuneOutputsExist, run_finetune_job
from tests.test_formats import random_state

ROOT = Path(__file__).resolve().parents[1]


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))  # hidden temporaries included


def tensor_appearing_as(target: Path, make_dir: bool = False) -> OutputTensor:
    """A tensor whose making lets another writer take `target` first."""
    def make() -> torch.Tensor:
        target.mkdir() if make_dir else target.write_bytes(b"other run")
        return torch.ones(2)
    return OutputTensor("x", (2,), torch.float32, make)


@pytest.fixture(params=["renameat2", "link"])
def placement(request, monkeypatch):
    """Both ways of placing exclusively: renameat2(RENAME_NOREPLACE), and hard link / mkdir where it is missing."""
    if request.param == "link":
        monkeypatch.setattr(output, "_rename_noreplace", lambda src, dst: False)
    return request.param


def test_a_file_appearing_while_writing_wins_and_nothing_is_left(tmp_path, placement):
    target = tmp_path / "out.safetensors"
    with pytest.raises(AliceError, match="out.safetensors already exists"):
        write_safetensors(target, [tensor_appearing_as(target)])
    assert target.read_bytes() == b"other run" and names(tmp_path) == ["out.safetensors"]


def test_a_folder_appearing_while_writing_wins(tmp_path, placement):
    target = tmp_path / "model"
    with pytest.raises(AliceError, match="model already exists"):
        with atomic_output(target, folder=True) as tmp:
            write_safetensors(tmp / "weights.safetensors", [tensor_appearing_as(target, make_dir=True)])
    assert names(tmp_path) == ["model"] and names(target) == []


def test_complete_outputs_are_placed_and_readable(tmp_path, placement):
    path = write_safetensors(tmp_path / "w.safetensors", [OutputTensor("w", (3,), torch.float32, lambda: torch.arange(3.0))])
    assert torch.equal(load_file(str(path))["w"], torch.arange(3.0)) and names(tmp_path) == ["w.safetensors"]
    assert path.stat().st_mode & 0o777 == 0o644
    with atomic_output(tmp_path / "folder", folder=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert names(tmp_path / "folder") == ["config.json"]


def test_concurrent_writers_get_distinct_temporaries_and_one_wins(tmp_path, placement):
    target = tmp_path / "out.bin"
    first, second = atomic_output(target), atomic_output(target)
    tmp_a, tmp_b = first.__enter__(), second.__enter__()
    assert tmp_a != tmp_b and tmp_a.parent == tmp_b.parent == tmp_path
    tmp_a.write_bytes(b"a")
    tmp_b.write_bytes(b"b")
    first.__exit__(None, None, None)
    with pytest.raises(AliceError, match="already exists"):
        second.__exit__(None, None, None)
    assert target.read_bytes() == b"a" and names(tmp_path) == ["out.bin"]


def test_a_failed_write_leaves_nothing_and_replace_is_only_for_a_runs_own_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert names(tmp_path) == []
    checkpoint = tmp_path / "checkpoint.pt"
    for step in (1, 2):
        with atomic_output(checkpoint, replace=True) as tmp:
            torch.save({"step": step}, tmp)
    assert torch.load(checkpoint, weights_only=True) == {"step": 2} and names(tmp_path) == ["checkpoint.pt"]


def test_two_concurrent_converts_to_one_output_exactly_one_wins(tmp_path):
    source = tmp_path / "wan.safetensors"
    save_file(random_state(), str(source))
    out = tmp_path / "converted.safetensors"
    cmd = [sys.executable, "-m", "alice_core", "convert", str(source), str(out), "--to", "official"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.strip() == f"alice: error: {out} already exists; choose another output path or delete it"
    assert load_file(str(out)).keys() == random_state().keys()
    assert names(tmp_path) == ["converted.safetensors", "wan.safetensors"]


def test_finetune_refuses_existing_outputs_before_any_work(tmp_path):
    out = tmp_path / "mine.safetensors"
    (tmp_path / "mine.teacher.safetensors").write_bytes(b"not ours")
    with pytest.raises(FinetuneOutputsExist) as caught:
        run_finetune_job(None, lambda: pytest.fail("clips read"), FinetuneConfig(), out, tmp_path / "work")
    assert caught.value.path == tmp_path / "mine.teacher.safetensors"
    run = subprocess.run([sys.executable, "-m", "alice_core", "finetune", "--clips", str(tmp_path), "-o", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"alice: error: {tmp_path / 'mine.teacher.safetensors'} already exists; choose "
                                  "another -o path or delete it")
    assert names(tmp_path) == ["mine.teacher.safetensors"] and (tmp_path / "mine.teacher.safetensors").read_bytes() == b"not ours"


def test_a_second_download_of_the_same_file_at_once_is_the_clear_loser(tmp_path):
    file = next(iter(hub.load_catalogue().files.values()))
    dest = tmp_path / file.relative_path
    remote = hub.RemoteFile(url="http://127.0.0.1:9/never-fetched", etag="e" * 64, size=10, sha256=None,
                            send_token=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = hub.partial_path(dest, remote.etag)
    import fcntl

    with open(partial, "ab") as running:  # the first download holds its partial file
        fcntl.flock(running.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AliceError, match=f"another download of {file.filename} into .* is running; wait"):
            hub.download_file(file, dest, remote=remote)
    assert not dest.exists() and partial.exists()
