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
from alice_core.pipeline import GenerationSettings, load_pipeline
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


def test_model_loader_node_and_app_cache_run_every_dit_with_the_chosen_runtime(tmp_path, monkeypatch):
    from tests.bundles import random_tiny_bundle
    from tests.comfy_host import run_node
    from webui.models import ModelChoice, PipelineCache

    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "home"))
    bundle = random_tiny_bundle(tmp_path / "home" / "diffusion_models" / "three-blocks", num_layers=3)
    node_pipe = run_node("AliceModelLoader", model_name="three-blocks/model.json", precision="fp32", offload=False,
                         download=False, attention="sage", blocks_on_gpu=1)[0]
    choice = ModelChoice("three-blocks", "local", "three-blocks", str(bundle.folder))
    app_pipe = PipelineCache("cpu", runtime=DiTRuntime("sage", 1)).get(choice, "fp32")
    plain = load_pipeline(str(bundle.folder), precision="fp32")
    for pipe in (node_pipe, app_pipe):
        for sampler, dit in pipe.dits.items():
            assert dit.block_swap.streamed == [0, 1, 2] and dit.blocks[0].self_attn.attention.requested == "sage"
            cfg = dit.config
            x, t, ctx = torch.randn(1, cfg.in_dim, 3, 8, 8), torch.tensor([600.0]), torch.randn(1, 7, cfg.text_dim)
            with torch.inference_mode():
                assert torch.equal(dit(x, t, ctx), plain.dits[sampler](x, t, ctx))
            assert dit.block_swap.peak_resident == 1
    settings = GenerationSettings(prompt="a red ball", seed=2, steps=2)
    assert np.array_equal(app_pipe.generate(settings).frames, plain.generate(settings).frames)
