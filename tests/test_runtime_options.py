"""The DiT runtime options through the installed `alice` command: --attention, --blocks-on-gpu, --compile."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT
from alice_core.models.runtime import DiTRuntime, prepare_dit
from alice_core.video_io import read_video


def alice(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("alice")
    assert exe, "the alice console script is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_generate_with_a_missing_backend_and_block_swap_gives_the_same_video(tmp_path):
    plain, swapped = tmp_path / "plain.gif", tmp_path / "swapped.gif"
    first = alice("generate", "a red ball", "-o", str(plain), "--frames", "9")
    assert first.returncode == 0, first.stderr
    second = alice("generate", "a red ball", "-o", str(swapped), "--frames", "9", "--attention", "sage",
                   "--blocks-on-gpu", "2")
    assert second.returncode == 0, second.stderr
    notes = [line for line in second.stderr.splitlines() if "attention backend" in line]
    if notes:  # sageattention not installed here: one line, then sdpa
        assert notes == ["attention backend 'sage' is not installed (sageattention); using sdpa"]
    assert np.array_equal(read_video(plain)[0], read_video(swapped)[0])


def test_bad_blocks_on_gpu_names_the_flag(tmp_path):
    proc = alice("generate", "a ball", "-o", str(tmp_path / "x.gif"), "--blocks-on-gpu", "0")
    assert proc.returncode == 2 and "--blocks-on-gpu 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.gif").exists()


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    torch.manual_seed(0)
    cfg = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=8)
    model = WanDiT(cfg).eval()
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 16)
    with torch.no_grad():
        eager = model(x, t, ctx)
        prepare_dit(model, "cpu", DiTRuntime(compile=True))
        compiled = model(x, t, ctx)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
