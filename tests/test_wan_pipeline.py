"""A Wan-layout model end to end: rCM-style .pt DiT + official Wan2.1 VAE file + umT5 folder, through the CLI."""

import pytest
import torch

from alice_core.cli import main
from alice_core.models.config import WanDiTConfig, WanVAEConfig
from alice_core.models.dit import WanDiT
from alice_core.models.vae import WanVAE
from alice_core.video_io import read_video, read_video_metadata

from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: diffusers-layout umT5 folder)


@pytest.fixture(scope="module")
def wan_files(tmp_path_factory, tiny_umt5):  # noqa: F811
    root = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    # head_dim 128 as in real Wan, so the architecture is inferred from shapes alone (num_heads = dim / 128).
    dit = WanDiT(WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=1, text_dim=32))
    state = {f"net.{k}": v for k, v in dit.state_dict().items()}
    state["net.patch_embedding.weight"] = state["net.patch_embedding.weight"].reshape(128, 64)  # rCM's Linear form
    torch.save(state, root / "rcm_student.pt")
    vae = WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1))
    torch.save(vae.state_dict(), root / "Wan2.1_VAE.pth")
    return root, tiny_umt5[0]


def test_cli_generates_from_wan_layout_files(wan_files, tmp_path, capsys):
    root, umt5 = wan_files
    out = tmp_path / "wan.mp4"
    argv = ["generate", "a cat", "-o", str(out), "--model", str(root / "rcm_student.pt"), "--vae", str(root / "Wan2.1_VAE.pth"),
            "--text-encoder", str(umt5), "--frames", "5", "--width", "32", "--height", "48", "--steps", "2", "--seed", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    frames, fps = read_video(out)
    assert frames.shape == (5, 48, 32, 3) and fps == pytest.approx(16)
    meta = read_video_metadata(out)
    assert meta["model"] == "rcm_student" and str(meta["steps"]) == "2"


def test_wan_layout_size_rule_is_16(wan_files, tmp_path, capsys):
    root, umt5 = wan_files
    out = tmp_path / "bad.mp4"
    argv = ["generate", "a cat", "-o", str(out), "--model", str(root / "rcm_student.pt"), "--vae", str(root / "Wan2.1_VAE.pth"),
            "--text-encoder", str(umt5), "--frames", "5", "--width", "40", "--height", "48"]
    assert main(argv) == 2
    assert "width must be a multiple of 16, got 40" in capsys.readouterr().err
    assert not out.exists()


def test_single_checkpoint_needs_vae_and_text_encoder(wan_files, tmp_path, capsys):
    root, _ = wan_files
    assert main(["generate", "a cat", "-o", str(tmp_path / "x.mp4"), "--model", str(root / "rcm_student.pt")]) == 2
    assert "also pass --vae PATH" in capsys.readouterr().err
