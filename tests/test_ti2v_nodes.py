"""Wan2.2 TI2V-5B in ComfyUI: the Model Loader takes a single 48-channel file (ComfyUI's repackaged
wan2.2_ti2v_5B_fp16.safetensors layout: official Wan names, fp16), the VAE Loader the Wan2.2 VAE (Wan's
Wan2.2_VAE.pth pickle and ComfyUI's wan2.2_vae.safetensors), and the graph runs text-to-video and image-to-video
(the start image as the clean first latent frame) the way ComfyUI's executor runs nodes (inference mode, progress,
Cancel), on small random weights, against the library pipeline and the VAE's own encoding."""

from __future__ import annotations

import dataclasses
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.models.config import WAN22_VAE, WanVAEConfig
from alice_core.models.vae import WanVAE
from alice_core.pipeline import GenerationSettings, load_pipeline

from tests.comfy_host import ComfyHost, InterruptProcessingException
from tests.test_dit_parity import official_key
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: diffusers-layout umT5 folder)

DIT_FILE = "wan2.2_ti2v_5B_fp16.safetensors"
SIZE = dict(width=64, height=64, frames=5)  # stride 16 x patch 2: multiples of 32; 2 latent frames
RCM = dict(seed=5, steps=4, sigma_max=80.0, mode="sde", **SIZE)
PROMPT = "a red kite over a beach"


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_umt5):  # noqa: F811
    home = tmp_path / "home"
    monkeypatch.setenv("ALICE_HOME", str(home))
    monkeypatch.setenv("ALICE_OUTPUT_DIR", str(tmp_path / "out"))
    (home / "diffusion_models").mkdir(parents=True)
    torch.manual_seed(11)
    # in_dim = out_dim = 48 as TI2V-5B (its patch_embedding is [3072, 48, 1, 2, 2]); head_dim 128 as real Wan
    dit = WanTransformer3DModel(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=64, text_dim=32,
                                in_channels=48, out_channels=48, rope_max_seq_len=64)
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    save_file({official_key(k): v.half().contiguous() for k, v in dit.state_dict().items()},
              str(home / "diffusion_models" / DIT_FILE))
    (home / "vae").mkdir()
    torch.manual_seed(12)
    wan22 = WanVAE(dataclasses.replace(WAN22_VAE, base_dim=8, decoder_base_dim=8, dim_mult=(1, 2, 2, 2),
                                       num_res_blocks=1))
    torch.save(wan22.state_dict(), home / "vae" / "Wan2.2_VAE.pth")
    save_file({k: v.contiguous() for k, v in wan22.state_dict().items()}, str(home / "vae" / "wan2.2_vae.safetensors"))
    torch.save(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).state_dict(),
               home / "vae" / "Wan2.1_VAE.pth")
    shutil.copytree(tiny_umt5[0], home / "text_encoders" / "umt5")
    picture = np.random.default_rng(1).integers(0, 256, (72, 80, 3), dtype=np.uint8)
    return SimpleNamespace(home=home, picture=picture, image=torch.from_numpy(picture)[None].float() / 255)


def graph_parts(comfy: ComfyHost, vae_name: str = "Wan2.2_VAE.pth"):
    model = comfy.run("AliceModelLoader", model_name=DIT_FILE, precision="fp32", offload=False, download=False)[0]
    encoder = comfy.run("AliceTextEncoderLoader", text_encoder="umt5/text_encoder/config.json", precision="fp32",
                        device="default")[0]
    conditioning = comfy.run("AliceTextEncode", text_encoder=encoder, positive=PROMPT, negative="")[0]
    return model, conditioning, comfy.run("AliceVAELoader", vae_name=vae_name, precision="fp32")[0]


def library_video(models, image: np.ndarray | None = None):
    home = models.home
    pipe = load_pipeline(home / "diffusion_models" / DIT_FILE, "fp32", vae=home / "vae" / "Wan2.2_VAE.pth",
                         text_encoder=home / "text_encoders" / "umt5")
    settings = GenerationSettings(prompt=PROMPT, sampler="rcm", seed=RCM["seed"], steps=RCM["steps"],
                                  sigma_max=RCM["sigma_max"], **SIZE)
    return pipe(settings, image=image)


def test_ti2v_5b_text_to_video_graph_matches_the_library(models):
    comfy = ComfyHost()
    model, conditioning, vae = graph_parts(comfy)
    assert (model.latent_space.name, model.latent_space.latent_channels, model.latent_space.spatial_stride) == (
        "Wan2.2 VAE", 48, 16)
    assert model.start_image_use() == "optional"
    latent = comfy.run("AliceRCMSampler", node_id="7", model=model, conditioning=conditioning, **RCM)[0]
    assert latent["samples"].shape == (1, 48, 2, 4, 4) and latent["samples"].is_inference()
    assert comfy.updates == [("7", i, 4) for i in range(1, 5)]
    assert all(p is not None for p in comfy.previews)  # previewed with factors fitted on the loaded Wan2.2 VAE
    images = comfy.run("AliceVAEDecode", vae=vae, samples=latent, tiled=False, tile_size=256, overlap=64)[0]
    assert images.shape == (5, 64, 64, 3) and images.is_inference()

    expected = library_video(models)
    torch.testing.assert_close(latent["samples"], model.latent_space.to_raw(expected.latents), atol=1e-4, rtol=1e-4)
    frames = (images * 255).round().to(torch.uint8).numpy()
    assert np.abs(frames.astype(int) - expected.frames.astype(int)).max() <= 1
    # ComfyUI's repackaged safetensors VAE is the same network as Wan's pickle
    safetensors_vae = comfy.run("AliceVAELoader", vae_name="wan2.2_vae.safetensors", precision="fp32")[0]
    for (name, a), b in zip(vae.state_dict().items(), safetensors_vae.state_dict().values()):
        assert torch.equal(a, b), name


def test_ti2v_5b_start_image_is_the_clean_first_latent_frame(models):
    comfy = ComfyHost()
    model, conditioning, vae = graph_parts(comfy)
    with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    latent = comfy.run("AliceRCMSampler", model=model, conditioning=with_image, **RCM)[0]["samples"]

    # the picture fitted as Wan fits it (bicubic to cover 64x64, centre crop), then the Wan2.2 VAE's own encoding
    fitted = torch.nn.functional.interpolate(models.image.permute(0, 3, 1, 2), size=(64, 71), mode="bicubic",
                                             antialias=True, align_corners=False)[:, :, :, 3:67]
    with torch.no_grad():
        first = vae.encode(fitted[:, :, None].clamp(0, 1) * 2 - 1)
    torch.testing.assert_close(model.latent_space.from_raw(latent)[:, :, :1], first, atol=1e-4, rtol=1e-4)
    expected = library_video(models, image=models.picture)
    torch.testing.assert_close(latent, model.latent_space.to_raw(expected.latents), atol=1e-4, rtol=1e-4)
    text_only = comfy.run("AliceRCMSampler", model=model, conditioning=conditioning, **RCM)[0]["samples"]
    assert not torch.allclose(text_only[:, :, 1:], latent[:, :, 1:], atol=1e-3)  # the image steers the later frames


def test_ti2v_5b_cancel_and_wrong_vae_are_named(models):
    comfy = ComfyHost().cancel_at(2)
    model, conditioning, wan22 = graph_parts(comfy)
    with pytest.raises(InterruptProcessingException):
        comfy.run("AliceRCMSampler", node_id="7", model=model, conditioning=conditioning, **RCM)
    assert comfy.updates == [("7", 1, 4), ("7", 2, 4)] and not comfy.interrupted

    comfy = ComfyHost()
    wan21 = comfy.run("AliceVAELoader", vae_name="Wan2.1_VAE.pth", precision="fp32")[0]
    latent = comfy.run("AliceRCMSampler", model=model, conditioning=conditioning, **RCM)[0]
    with pytest.raises(AliceError, match=r"^Alice VAE Decode: the latent has 48 channels but the Wan2.1 VAE takes 16; "
                                         r"choose the Wan2.2 VAE \(z_dim 48\) in Alice VAE Loader"):
        comfy.run("AliceVAEDecode", vae=wan21, samples=latent, tiled=False, tile_size=256, overlap=64)
    with pytest.raises(AliceError, match=r"^Alice rCM Sampler \(1-4 steps\): the VAE connected to Alice Start Image "
                                         r"makes 16-channel latents but 'wan2.2_ti2v_5B_fp16' takes 48"):
        with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=wan21, start_image=models.image)[0]
        comfy.run("AliceRCMSampler", model=model, conditioning=with_image, **RCM)
