"""Image-to-video in ComfyUI: a Wan2.2 I2V pair loaded from two files by the Model Loader, a native IMAGE through
Alice Start Image, Wan2.1 I2V with Alice CLIP Vision Loader; every node run as ComfyUI's executor runs it (inference
mode, progress, Cancel) on small random-weight models, against the library pipeline; bad input names the node and
input."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.models.config import WanVAEConfig
from alice_core.models.vae import WanVAE
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.sampling import Experts

from tests.comfy_host import ComfyHost, InterruptProcessingException, load_pack, node_classes
from tests.test_clip_vision import WIDTH as CLIP_WIDTH
from tests.test_clip_vision import clip_files  # noqa: F401  (fixture: tiny CLIP vision file and folder)
from tests.test_dit_parity import official_key
from tests.test_expert_pairs import official_state
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: diffusers-layout umT5 folder)

SIZE = dict(width=48, height=32, frames=5)
RCM = dict(seed=3, steps=4, sigma_max=200.0, mode="sde", **SIZE)  # the I2V A14B preset's schedule
PROMPT = "a cat walks along a wall"


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_umt5, clip_files):  # noqa: F811
    """Standalone model folders (where the nodes look outside ComfyUI) holding a Wan2.2 I2V pair, a Wan2.1 I2V
    DiT with CLIP, a text-to-video DiT, the Wan2.1 VAE, a umT5 folder and a CLIP vision file."""
    home = tmp_path / "home"
    monkeypatch.setenv("ALICE_HOME", str(home))
    monkeypatch.setenv("ALICE_OUTPUT_DIR", str(tmp_path / "out"))
    dits = home / "diffusion_models"
    dits.mkdir(parents=True)
    save_file(official_state(1), str(dits / "i2v_high.safetensors"))
    save_file(official_state(2), str(dits / "i2v_low.safetensors"))
    save_file(official_state(5, in_channels=16), str(dits / "t2v.safetensors"))
    torch.manual_seed(4)
    wan21 = WanTransformer3DModel(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=64, text_dim=32,
                                  in_channels=36, out_channels=16, image_dim=CLIP_WIDTH, added_kv_proj_dim=128)
    save_file({official_key(k): v.contiguous() for k, v in wan21.state_dict().items()}, str(dits / "wan21_i2v.safetensors"))
    (home / "vae").mkdir()
    torch.manual_seed(0)
    torch.save(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).state_dict(),
               home / "vae" / "Wan2.1_VAE.pth")
    shutil.copytree(tiny_umt5[0], home / "text_encoders" / "umt5")
    (home / "clip_vision").mkdir()
    shutil.copy(clip_files[0] / "clip_vision_tiny.safetensors", home / "clip_vision")
    picture = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return SimpleNamespace(home=home, picture=picture, image=torch.from_numpy(picture)[None].float() / 255)


def load_model(comfy: ComfyHost, model_name: str, **options):
    return comfy.run("AliceModelLoader", model_name=model_name, precision="fp32", offload=False, download=False,
                     **options)[0]


def prompt_and_vae(comfy: ComfyHost):
    encoder = comfy.run("AliceTextEncoderLoader", text_encoder="umt5/text_encoder/config.json", precision="fp32",
                        device="default")[0]
    conditioning = comfy.run("AliceTextEncode", text_encoder=encoder, positive=PROMPT, negative="")[0]
    return conditioning, comfy.run("AliceVAELoader", vae_name="Wan2.1_VAE.pth", precision="fp32")[0]


def library_latents(models, high: str, low: str | None = None, clip: str | None = None, **settings):
    folder = models.home
    pipe = load_pipeline(folder / "diffusion_models" / high, "fp32", vae=folder / "vae" / "Wan2.1_VAE.pth",
                         text_encoder=folder / "text_encoders" / "umt5", low_noise_model=low and
                         folder / "diffusion_models" / low, clip_vision=clip and folder / "clip_vision" / clip)
    s = GenerationSettings(prompt=PROMPT, sampler="rcm", seed=RCM["seed"], steps=RCM["steps"],
                           sigma_max=RCM["sigma_max"], **SIZE, **settings)
    return pipe(s, output_type="latent", image=models.picture)


def test_wan22_pair_from_two_files_with_a_native_image_matches_the_library(models):
    comfy = ComfyHost()
    model = load_model(comfy, "i2v_high.safetensors", low_noise_model_name="i2v_low.safetensors")
    pair = model.dits["rcm"]
    assert isinstance(pair, Experts) and pair.boundary == 0.9  # Wan's I2V default for a pair of in_dim-36 files
    assert not torch.equal(pair.high.head.head.weight, pair.low.head.head.weight)
    conditioning, vae = prompt_and_vae(comfy)
    with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    latent = comfy.run("AliceRCMSampler", node_id="7", model=model, conditioning=with_image, **RCM)[0]["samples"]

    expected = library_latents(models, "i2v_high.safetensors", "i2v_low.safetensors")
    assert expected.experts == ["high", "high", "low", "low"]  # sigma_max 200 at boundary 0.9: two steps each
    torch.testing.assert_close(latent, model.latent_space.to_raw(expected.latents), atol=1e-4, rtol=1e-4)
    assert comfy.updates == [("7", i, 4) for i in range(1, 5)] and latent.is_inference()

    boundary = load_model(comfy, "i2v_high.safetensors", low_noise_model_name="i2v_low.safetensors", boundary=0.85)
    assert boundary.dits["rcm"].boundary == 0.85


def test_the_image_condition_is_comfyuis_wan_image_to_video_latent(models):
    """As ComfyUI's WanImageToVideo (comfy_extras/nodes_wan.py), the VAE encodes the IMAGE batch [start image, then
    0.5 grey frames] (the image fitted as Wan fits it: bicubic to cover, centre crop): the latent half of y is that
    encoding, its mask half marks the first latent frame."""
    comfy = ComfyHost()
    model = load_model(comfy, "i2v_high.safetensors", low_noise_model_name="i2v_low.safetensors")
    conditioning, vae = prompt_and_vae(comfy)
    fitted = torch.nn.functional.interpolate(models.image.permute(0, 3, 1, 2), size=(34, 48), mode="bicubic",
                                             antialias=True, align_corners=False)[:, :, 1:33]  # cover 48x32, crop
    frames = torch.full((SIZE["frames"], 32, 48, 3), 0.5)
    frames[0] = fitted[0].permute(1, 2, 0).clamp(0, 1)
    with torch.no_grad():
        expected = vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1)
    with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    settings = GenerationSettings(prompt="", sampler="rcm", steps=4, **SIZE)
    _, condition = load_pack().nodes.image_to_video.sampler_image_condition(model, with_image, settings)
    assert condition.y.shape == (1, 4 + 16, 2, 4, 6) and condition.clip is None
    torch.testing.assert_close(condition.y[:, 4:], expected, atol=1e-5, rtol=1e-5)
    assert condition.y[:, :4, 0].eq(1).all() and condition.y[:, :4, 1:].eq(0).all()


def test_wan21_i2v_takes_clip_vision_through_its_loader(models):
    comfy = ComfyHost()
    model = load_model(comfy, "wan21_i2v.safetensors")
    conditioning, vae = prompt_and_vae(comfy)
    assert node_classes()["AliceCLIPVisionLoader"].INPUT_TYPES()["required"]["clip_name"][0] == [
        "clip_vision_tiny.safetensors"]
    clip = comfy.run("AliceCLIPVisionLoader", clip_name="clip_vision_tiny.safetensors")[0]
    without = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    with pytest.raises(AliceError, match=r"^Alice rCM Sampler \(1-4 steps\): 'wan21_i2v' is a Wan2.1 image-to-video "
                                         r"model: it needs the CLIP vision encoder; connect Alice CLIP Vision Loader "
                                         r"to Alice Start Image's input 'clip_vision'$"):
        comfy.run("AliceRCMSampler", model=model, conditioning=without, **RCM)
    with_clip = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image,
                          clip_vision=clip)[0]
    latent = comfy.run("AliceRCMSampler", model=model, conditioning=with_clip, **RCM)[0]["samples"]
    expected = library_latents(models, "wan21_i2v.safetensors", clip="clip_vision_tiny.safetensors")
    torch.testing.assert_close(latent, model.latent_space.to_raw(expected.latents), atol=1e-4, rtol=1e-4)


def test_cancel_stops_an_image_to_video_run_between_steps(models):
    comfy = ComfyHost().cancel_at(2)
    model = load_model(comfy, "i2v_high.safetensors", low_noise_model_name="i2v_low.safetensors")
    conditioning, vae = prompt_and_vae(comfy)
    with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    with pytest.raises(InterruptProcessingException):
        comfy.run("AliceRCMSampler", node_id="7", model=model, conditioning=with_image, **RCM)
    assert comfy.updates == [("7", 1, 4), ("7", 2, 4)] and not comfy.interrupted


def test_bad_image_input_names_the_node_and_input(models):
    comfy = ComfyHost()
    pair = load_model(comfy, "i2v_high.safetensors", low_noise_model_name="i2v_low.safetensors")
    t2v = load_model(comfy, "t2v.safetensors")
    conditioning, vae = prompt_and_vae(comfy)
    with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    sampler = r"^Alice rCM Sampler \(1-4 steps\): "
    with pytest.raises(AliceError, match=sampler + r"'i2v_high' is an image-to-video model: it needs a start image; "
                                         r"connect the conditioning of Alice Start Image \(with a start_image\) to "
                                         r"input 'conditioning'$"):
        comfy.run("AliceRCMSampler", model=pair, conditioning=conditioning, **RCM)
    with pytest.raises(AliceError, match=sampler + r"'t2v' is a text-to-video model and takes no start image; connect "
                                         r"Alice Prompt Encode's conditioning to input 'conditioning' directly"):
        comfy.run("AliceRCMSampler", model=t2v, conditioning=with_image, **RCM)
    with pytest.raises(AliceError, match=r"^Alice Start Image: input 'start_image' must be an IMAGE batch"):
        comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image[..., :1])
    with pytest.raises(AliceError, match=r"^Alice Model Loader: input 'boundary' is for two-expert \(Wan2.2 A14B\) "
                                         r"models: set it to 0, or choose the low-noise expert"):
        load_model(comfy, "t2v.safetensors", boundary=0.9)
    with pytest.raises(AliceError, match=r"^Alice Model Loader: alice-tiny is a model bundle; input "
                                         r"'low_noise_model_name' is for a single Wan2.2 high-noise file"):
        load_model(comfy, "alice-tiny", low_noise_model_name="i2v_low.safetensors")
    with pytest.raises(AliceError, match=r"^Alice Model Loader: the high-noise model .* and the low-noise model .* "
                                         r"have different architectures \(in_dim 16 vs 36\)"):
        load_model(comfy, "t2v.safetensors", low_noise_model_name="i2v_low.safetensors")


def test_teacher_sampler_guides_each_expert_of_a_pair(models):
    """guidance_low_noise: the low-noise expert's CFG (Wan2.2's per-expert guidance), -1 the same as cfg; the node
    gives what the library's per-expert teacher sampling gives (tests/test_expert_guidance.py checks that against
    `sample_flow_matching` with an `Experts` guidance)."""
    comfy = ComfyHost()
    model = load_model(comfy, "i2v_high.safetensors", low_noise_model_name="i2v_low.safetensors")
    conditioning, vae = prompt_and_vae(comfy)
    with_image = comfy.run("AliceStartImage", conditioning=conditioning, vae=vae, start_image=models.image)[0]
    teacher = dict(model=model, conditioning=with_image, seed=3, steps=3, cfg=4.0, shift=5.0, **SIZE)
    latent = comfy.run("AliceTeacherSampler", guidance_low_noise=2.0, **teacher)[0]["samples"]
    same = comfy.run("AliceTeacherSampler", **teacher)[0]["samples"]

    pipe = load_pipeline(models.home / "diffusion_models" / "i2v_high.safetensors", "fp32",
                         vae=models.home / "vae" / "Wan2.1_VAE.pth", text_encoder=models.home / "text_encoders" / "umt5",
                         low_noise_model=models.home / "diffusion_models" / "i2v_low.safetensors")
    s = GenerationSettings(prompt=PROMPT, negative_prompt="", sampler="teacher", seed=3, steps=3, guidance=4.0,
                           guidance_low=2.0, shift=5.0, **SIZE)
    expected = pipe(s, output_type="latent", image=models.picture)
    assert expected.experts == ["high", "high", "low"]  # shift 5: times 1, 0.909, 0.714 at boundary 0.9
    torch.testing.assert_close(latent, model.latent_space.to_raw(expected.latents), atol=1e-4, rtol=1e-4)
    assert latent.is_inference() and not torch.allclose(latent, same, atol=1e-4)

    single = load_model(comfy, "t2v.safetensors")
    with pytest.raises(AliceError, match=r"^Alice Teacher Sampler: input 'guidance_low_noise' is for two-expert .* "
                                          r"set it to -1$"):
        comfy.run("AliceTeacherSampler", guidance_low_noise=3.0, **{**teacher, "model": single, "conditioning": conditioning})
