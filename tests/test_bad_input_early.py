"""Issue 16's bad input through the installed `alice` command, the library and the Model Loader node: a high/low pair
whose architectures differ, an image-to-video model without a start image, a start image for a text-to-video model,
latents of one Wan VAE given to the other, and a LoRA for a pair (not supported yet). Each is one line naming the
fix in the words of the place (a CLI flag, a node input), exit 2 and no output file, and each is refused from the
file headers before any weight is read: the DiTs here hold only NaN weights, which loading refuses with another
error (the control runs with the same files and good input reach that error)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.generation import GenerationSettings
from alice_core.models.config import WAN22_VAE, WanVAEConfig
from alice_core.models.vae import WanVAE
from alice_core.preflight import preflight
from tests.comfy_host import ComfyHost
from tests.hardening import assert_one_line_error, run_alice
from tests.test_expert_pairs import official_state, write_sharded
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: diffusers-layout umT5 folder)

NAN_WEIGHTS = "NaN/inf values"  # what loading says of these files once it reads a weight


def nan_dit(seed: int, in_channels: int, out_channels: int = 16) -> dict[str, torch.Tensor]:
    """A DiT's official-layout tensors (real Wan head_dim 128), every value NaN."""
    state = official_state(seed, in_channels)
    if out_channels != 16:  # TI2V-5B: a 48-channel head
        state["head.head.weight"], state["head.head.bias"] = torch.zeros(out_channels * 4, 128), torch.zeros(out_channels * 4)
    return {k: torch.full_like(v, float("nan")).contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_umt5):  # noqa: F811
    root = tmp_path_factory.mktemp("early")
    for name, channels in (("i2v_high", 36), ("i2v_low", 36), ("t2v_high", 16), ("t2v_low", 16)):
        save_file(nan_dit(len(name), channels), str(root / f"{name}.safetensors"))
    save_file(nan_dit(9, 48, 48), str(root / "ti2v_5b.safetensors"))
    write_sharded(nan_dit(1, 36), root / "official" / "high_noise_model")  # Wan2.2's release folder
    write_sharded(nan_dit(2, 36), root / "official" / "low_noise_model")
    torch.manual_seed(0)
    torch.save(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).state_dict(),
               root / "Wan2.1_VAE.pth")
    wan22 = WanVAE(dataclasses.replace(WAN22_VAE, base_dim=8, decoder_base_dim=8, dim_mult=(1, 2, 2, 2),
                                       num_res_blocks=1))
    save_file({k: v.contiguous() for k, v in wan22.state_dict().items()}, str(root / "wan2.2_vae.safetensors"))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "start.png")
    save_file({"diffusion_model.blocks.0.ffn.2.diff": torch.zeros(16, 64)}, str(root / "lora.safetensors"))
    return root, tiny_umt5[0]


def alice(files, tmp_path, model: str, *flags: str, vae: str = "Wan2.1_VAE.pth"):
    root, umt5 = files
    out = tmp_path / "out.mp4"
    proc = run_alice("generate", "a cat", "-o", str(out), "--model", str(root / model), "--vae", str(root / vae),
                     "--text-encoder", str(umt5), "--frames", "5", "--width", "64", "--height", "64", *flags)
    return proc, out


CASES = {  # model, flags, VAE, the words of the one error line
    "i2v pair without an image": (
        "i2v_high.safetensors", ["--low-noise-model", "i2v_low.safetensors"], "Wan2.1_VAE.pth",
        ["is an image-to-video model: pass a start image (--image START.png)"]),
    "i2v pair folder without an image": (
        "official", [], "Wan2.1_VAE.pth", ["'official' is an image-to-video model", "--image START.png"]),
    "t2v pair with an image": (
        "t2v_high.safetensors", ["--low-noise-model", "t2v_low.safetensors", "--image", "start.png"],
        "Wan2.1_VAE.pth", ["is a text-to-video model: it takes no start image; drop --image"]),
    "pair of different architectures": (
        "i2v_high.safetensors", ["--low-noise-model", "t2v_low.safetensors", "--image", "start.png"],
        "Wan2.1_VAE.pth", ["different architectures (in_dim 36 vs 16)",
                           "pass the two experts of one Wan2.2 model (--model HIGH --low-noise-model LOW)"]),
    "LoRA on a pair": (
        "i2v_high.safetensors", ["--low-noise-model", "i2v_low.safetensors", "--image", "start.png", "--lora",
                                 "lora.safetensors"], "Wan2.1_VAE.pth",
        ["--lora: LoRAs on two-expert (Wan2.2 A14B) models are not supported yet", "drop --lora"]),
    "48-channel DiT with the Wan2.1 VAE": (
        "ti2v_5b.safetensors", [], "Wan2.1_VAE.pth",
        ["makes 48-channel latents but the VAE has 16; use the Wan2.2 VAE (z_dim 48) (--vae)"]),
    "16-channel pair with the Wan2.2 VAE": (
        "i2v_high.safetensors", ["--low-noise-model", "i2v_low.safetensors", "--image", "start.png"],
        "wan2.2_vae.safetensors", ["makes 16-channel latents but the VAE has 48; use the Wan2.1 VAE (z_dim 16) (--vae)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_refuses_from_the_headers_in_one_line(files, tmp_path, case):
    model, flags, vae, words = CASES[case]
    root, _ = files
    flags = [str(root / f) if f.endswith((".png", ".safetensors")) else f for f in flags]
    proc, out = alice(files, tmp_path, model, *flags, vae=vae)
    line = assert_one_line_error(proc, *words)
    assert NAN_WEIGHTS not in line and not out.exists()


@pytest.mark.parametrize("model, flags, vae", [
    ("i2v_high.safetensors", ["--low-noise-model", "i2v_low.safetensors", "--image", "start.png"], "Wan2.1_VAE.pth"),
    ("official", ["--image", "start.png"], "Wan2.1_VAE.pth"),
    ("ti2v_5b.safetensors", [], "wan2.2_vae.safetensors"),
], ids=["i2v pair", "i2v pair folder", "ti2v-5b"])
def test_control_the_same_files_with_good_input_reach_the_weights(files, tmp_path, model, flags, vae):
    root, _ = files
    flags = [str(root / f) if f.endswith((".png", ".safetensors")) else f for f in flags]
    proc, out = alice(files, tmp_path, model, *flags, vae=vae)
    assert_one_line_error(proc, NAN_WEIGHTS)  # loading began: the bad-input checks above came first
    assert not out.exists()


def test_library_preflight_names_the_same_fixes(files):
    root, _ = files
    settings = GenerationSettings("a cat", frames=5, width=64, height=64)
    pair = dict(model=str(root / "i2v_high.safetensors"), low_noise_model=str(root / "i2v_low.safetensors"),
                vae=str(root / "Wan2.1_VAE.pth"))
    with pytest.raises(AliceError, match=r"image-to-video model: pass a start image \(--image START.png\)$"):
        preflight(settings, **pair)
    resolved = preflight(dataclasses.replace(settings, image="start.png", sigma_max=200.0), **pair)
    assert (resolved.boundary, resolved.shift, resolved.guidance) == (0.9, 5.0, 3.5)  # Wan2.2 I2V-A14B's
    with pytest.raises(AliceError, match=r"use the Wan2.1 VAE \(z_dim 16\) \(--vae\)$"):
        preflight(dataclasses.replace(settings, image="start.png"),
                  **{**pair, "vae": str(root / "wan2.2_vae.safetensors")})
    with pytest.raises(AliceError, match=r"different architectures \(in_dim 36 vs 16\); pass the two experts"):
        preflight(settings, **{**pair, "low_noise_model": str(root / "t2v_low.safetensors")})


def test_model_loader_names_its_inputs_before_reading_weights(files, tmp_path, monkeypatch):
    root, _ = files
    home = tmp_path / "home"
    (home / "diffusion_models").mkdir(parents=True)
    for name in ("i2v_high", "t2v_low"):
        shutil.copy(root / f"{name}.safetensors", home / "diffusion_models")
    monkeypatch.setenv("ALICE_HOME", str(home))
    comfy = ComfyHost()
    options = dict(precision="fp32", offload=False, download=False)
    with pytest.raises(AliceError, match=r"^Alice Model Loader: the high-noise model .* have different architectures "
                                         r"\(in_dim 36 vs 16\); choose the two experts of one Wan2.2 model in inputs "
                                         r"'model_name' and 'low_noise_model_name'$"):
        comfy.run("AliceModelLoader", model_name="i2v_high.safetensors", low_noise_model_name="t2v_low.safetensors",
                  **options)
    with pytest.raises(AliceError, match=NAN_WEIGHTS):  # control: one good file alone is read, and refused for NaN
        comfy.run("AliceModelLoader", model_name="i2v_high.safetensors", **options)
