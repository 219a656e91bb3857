"""Catalogue models that bring more than a DiT, run by their catalogue names from stand-in files (small random
weights in the real layouts) placed where `alice download` puts them: lightx2v's Wan2.1 I2V base model with its
4-step LoRA applied on load and the CLIP vision file (CLI, ComfyUI node, app), and TI2V-5B with the Wan2.2 VAE and
Wan's preset (CLI); the Wan2.2 pairs (rCM's merged I2V .pt files, Comfy-Org's scaled fp8 T2V files) downloaded by
their catalogue names from a Hub on 127.0.0.1 and run with their presets."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file

from alice_core import catalogue as catalogue_module, hub
from alice_core.cli import main
from alice_core.loading.checkpoint import read_state_dict
from alice_core.loading.experts import load_expert_pair
from alice_core.models.config import WAN22_VAE, WanVAEConfig
from alice_core.models.vae import WanVAE
from alice_core.video_io import read_video, read_video_metadata

from tests.comfy_host import ComfyHost
from tests.test_clip_vision import WIDTH as CLIP_WIDTH
from tests.test_clip_vision import clip_files  # noqa: F401  (fixture: tiny CLIP vision file)
from tests.test_dit_parity import official_key
from tests.test_expert_pairs import official_state
from tests.test_formats import write_variant
from tests.test_hub import fake_hub  # noqa: F401  (fixture: the Hub and its CDN on 127.0.0.1)
from tests.test_text_encoders import tiny_umt5, wan_umt5_state  # noqa: F401  (fixture: umT5 folder)

I2V = "lightx2v-wan2.1-i2v-14b-480p"
LORA_KEY = "diffusion_model.blocks.0.ffn.2.diff"  # lightx2v's full weight difference of one Linear
SIZE = ["--frames", "5", "--width", "48", "--height", "32", "--seed", "1"]


def dit_state(seed: int, channels: int, image_dim: int | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    extra = {"image_dim": image_dim, "added_kv_proj_dim": 128} if image_dim else {}
    dit = WanTransformer3DModel(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=64, text_dim=32,
                                in_channels=channels + (20 if image_dim else 0), out_channels=channels, **extra)
    return {official_key(k): (v * 0.5).half().contiguous() for k, v in dit.state_dict().items()}  # fp16 as Comfy-Org


def catalogue_target(catalogue, name: str):
    """Where `alice download` puts the catalogue file `name` (under $ALICE_HOME), its folder made."""
    path = hub.target_path(catalogue.files[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def place_wan_text_encoder(catalogue, model: str, tiny_umt5) -> None:  # noqa: F811
    """The tiny umT5 as Wan's .pth and its tokenizer files, where a download of catalogue `model` puts them."""
    torch.save(wan_umt5_state(tiny_umt5[1]), catalogue_target(catalogue, "wan2.1-umt5-xxl-enc-bf16"))
    tokenizer = tiny_umt5[0] / "tokenizer"
    for name in [n for n in catalogue.models[model].extra_files if "tokenizer" in n]:
        path = catalogue_target(catalogue, name)
        source = tokenizer / path.name
        if source.is_file():
            shutil.copy(source, path)
        else:  # a file this tokenizer does without (the catalogue lists Wan's four)
            path.write_text("{}")


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_umt5, clip_files):  # noqa: F811
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "alice"))
    monkeypatch.setenv("ALICE_OUTPUT_DIR", str(tmp_path / "out"))
    catalogue = hub.load_catalogue()

    def target(name: str):
        return catalogue_target(catalogue, name)

    place_wan_text_encoder(catalogue, I2V, tiny_umt5)
    save_file(dit_state(3, 16, CLIP_WIDTH), str(target("wan2.1-i2v-14b-480p-comfy")))
    torch.manual_seed(4)
    torch.save(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).state_dict(),
               target("wan2.1-vae"))
    shutil.copy(clip_files[0] / "clip_vision_tiny.safetensors", target("clip-vision-h-comfy"))
    diff = torch.randn(128, 64, generator=torch.Generator().manual_seed(5)) * 0.1
    save_file({LORA_KEY: diff}, str(target("lightx2v-wan2.1-i2v-14b-4step-lora")))
    save_file(dit_state(6, 48), str(target("wan2.2-ti2v-5b-comfy")))
    torch.manual_seed(7)
    torch.save(WanVAE(dataclasses.replace(WAN22_VAE, base_dim=8, decoder_base_dim=8, dim_mult=(1, 2, 2, 2),
                                          num_res_blocks=1)).state_dict(), target("wan2.2-vae"))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "start.png")
    base = read_state_dict(target("wan2.1-i2v-14b-480p-comfy"))["blocks.0.ffn.2.weight"].float()
    return {"root": tmp_path, "catalogue": catalogue, "lora_weight": base + diff,
            "lora_file": target("lightx2v-wan2.1-i2v-14b-4step-lora").name}


def test_lightx2v_i2v_by_its_catalogue_name_in_the_cli(home, capsys):
    out = home["root"] / "i2v.mp4"
    code = main(["generate", "a cat", "--model", I2V, "--image", str(home["root"] / "start.png"), "-o", str(out),
                 *SIZE])
    assert code == 0, capsys.readouterr().err
    meta = read_video_metadata(out)
    assert (meta["lora"], float(meta["lora_strength"]), meta["steps"], float(meta["sigma_max"])) == (
        home["lora_file"], 1.0, 4, 80.0)  # the model's own LoRA and its 4-step preset
    assert read_video(out)[0].shape == (5, 32, 48, 3)


def test_lightx2v_i2v_catalogue_model_in_the_node_and_the_app(home):
    comfy = ComfyHost()
    model = comfy.run("AliceModelLoader", model_name=f"catalogue/{I2V}", precision="fp32", offload=False,
                      download=False)[0]
    assert model.loras == ((home["lora_file"], 1.0),)
    torch.testing.assert_close(model.dits["rcm"].blocks[0].ffn[2].weight, home["lora_weight"])  # base + difference

    from webui.studio import Job, Studio

    studio = Studio(home["root"] / "app-out", models_dir=home["root"] / "app-models")
    choice = studio.choice(f"hub/{I2V}")
    assert choice.available and choice.clip_vision == "clip_vision_h.safetensors"
    assert "clip_vision_h.safetensors" in studio.clip_vision_names()  # where `alice download` put it
    picture = np.asarray(Image.open(home["root"] / "start.png"))
    made = studio.generate(Job(model=f"hub/{I2V}", prompt="a cat", seed=1, size="48x32", frames=5, image=picture,
                               clip_vision="clip_vision_h.safetensors"))
    assert made.video.loras == ((home["lora_file"], 1.0),) and made.video.settings.steps == 4
    torch.testing.assert_close(studio.pipeline(f"hub/{I2V}").dits["rcm"].blocks[0].ffn[2].weight,
                               home["lora_weight"])


def test_ti2v_5b_by_its_catalogue_name_with_wans_preset(home, capsys):
    preset = home["catalogue"].models["wan2.2-ti2v-5b"].defaults
    assert {k: preset[k] for k in ("frames", "fps", "width", "height", "sampler")} == {
        "frames": 121, "fps": 24, "width": 1280, "height": 704, "sampler": "teacher"}
    out = home["root"] / "ti2v.mp4"
    code = main(["generate", "a kite", "--model", "wan2.2-ti2v-5b", "--steps", "2", "--frames", "5", "--width", "64",
                 "--height", "64", "--image", str(home["root"] / "start.png"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    meta = read_video_metadata(out)
    assert (meta["sampler"], meta["fps"], float(meta["shift"]), float(meta["guidance"])) == ("teacher", 24, 5.0, 5.0)
    assert read_video(out)[0].shape == (5, 64, 64, 3)

    from webui.studio import Job, Studio  # the app runs it too, with and without a start image

    studio = Studio(home["root"] / "app-out", models_dir=home["root"] / "app-models")
    assert studio.pipeline("hub/wan2.2-ti2v-5b").start_image_use() == "optional"
    picture = np.asarray(Image.open(home["root"] / "start.png"))
    for image in (None, picture):
        made = studio.generate(Job(model="hub/wan2.2-ti2v-5b", prompt="a kite", size="64x64", frames=5,
                                   sampler="teacher", steps=2, image=image))
        assert made.video.settings.fps == 24 and read_video(made.path)[0].shape == (5, 64, 64, 3)


# ---------------------------------------------------------------- Wan2.2 pairs, downloaded from a Hub on 127.0.0.1


def accept_stand_ins(monkeypatch, folder, content: dict[str, bytes]) -> None:
    """The packaged catalogue with the sha256 and size it confirms for a real file (the Wan2.1 VAE's) replaced by
    those of the stand-in served under that name, so the download's digest check passes for the small file."""
    spec = json.loads(catalogue_module.CATALOGUE_PATH.read_text())
    for name, data in content.items():
        entry = spec["files"][name]
        if entry.get("sha256"):
            entry["sha256"] = hashlib.sha256(data).hexdigest()
        if entry.get("size"):
            entry["size"] = len(data)
    path = folder / "catalogue.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setattr(catalogue_module, "CATALOGUE_PATH", path)


def serve_model(fake_hub, catalogue, model: str, dits: dict[str, bytes], tiny_umt5,  # noqa: F811
                monkeypatch, folder) -> dict[str, bytes]:
    """Put every file of catalogue `model` on the fake Hub under its catalogue repository and file name: `dits`
    ({role: file bytes}), a small Wan2.1 VAE and the tiny umT5 in Wan's .pth form with its tokenizer files (the
    catalogue's digests of real files swapped for theirs, see `accept_stand_ins`). Returns {catalogue file name:
    bytes}."""
    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    torch.manual_seed(4)
    entry = catalogue.models[model]
    content = {entry.roles[role]: data for role, data in dits.items()}
    content[entry.roles["vae"]] = saved(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1))
                                        .state_dict())
    content[entry.roles["text_encoder"]] = saved(wan_umt5_state(tiny_umt5[1]))
    for name in entry.extra_files:
        source = tiny_umt5[0] / "tokenizer" / catalogue.files[name].relative_path.rsplit("/", 1)[-1]
        content[name] = source.read_bytes() if source.is_file() else b"{}"  # one the tiny tokenizer does without
    for name, data in content.items():
        file = catalogue.files[name]
        fake_hub.add(file.repo_id, file.filename, data, lfs=len(data) > 100_000)
    accept_stand_ins(monkeypatch, folder, content)
    return content


def official_pair(seed: int, channels: int) -> tuple[dict, dict]:
    """Two experts' official-layout weights (head_dim 128 as real Wan), bf16 as the released files."""
    return tuple({k: v.to(torch.bfloat16) for k, v in official_state(s, channels).items()} for s in (seed, seed + 1))


def test_rcm_wan22_i2v_pair_downloads_by_its_catalogue_name_and_runs_two_steps_per_expert(
        fake_hub, tmp_path, monkeypatch, tiny_umt5, capsys):  # noqa: F811
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "alice"))
    catalogue = hub.load_catalogue()
    states = official_pair(21, 36)
    dits = {role: write_variant(state, "rcm", tmp_path / "merged" / role)[0].read_bytes()
            for role, state in zip(("dit", "dit_low"), states)}
    content = serve_model(fake_hub, catalogue, "rcm-wan2.2-i2v-a14b", dits, tiny_umt5, monkeypatch, tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "start.png")

    out = tmp_path / "fox.mp4"
    code = main(["generate", "a fox", "--model", "rcm-wan2.2-i2v-a14b", "--download", "--image",
                 str(tmp_path / "start.png"), "-o", str(out), *SIZE])
    err = capsys.readouterr().err  # download progress bars, then the timings
    assert code == 0, err
    for name, data in content.items():  # every file of the model, where `alice download` puts it
        assert hub.target_path(catalogue.files[name]).read_bytes() == data, name
    meta = read_video_metadata(out)
    assert (meta["experts"], meta["steps"], float(meta["sigma_max"]), float(meta["boundary"])) == (
        "high,high,low,low", 4, 200.0, 0.9)  # rCM times 0.995, 0.934 >= 0.9 > 0.853, 0.609
    assert read_video(out)[0].shape == (5, 32, 48, 3)
    # the downloaded merged .pt files are the very experts saved in Wan's official layout
    roles = catalogue.models["rcm-wan2.2-i2v-a14b"].roles
    pair = load_expert_pair(hub.target_path(catalogue.files[roles["dit"]]),
                            hub.target_path(catalogue.files[roles["dit_low"]]), "bf16")
    for expert, state in zip((pair.high, pair.low), states):
        for key, value in state.items():
            assert torch.equal(expert.state_dict()[key], value), key
    code = main(["generate", "a fox", "--model", "rcm-wan2.2-i2v-a14b", "-o", str(tmp_path / "none.mp4"), *SIZE])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert code == 2 and lines == [err.strip().splitlines()[-1]] and "pass a start image (--image START.png)" in lines[0]


def test_wan22_t2v_a14b_scaled_fp8_pair_downloads_and_runs_wans_teacher_preset(
        fake_hub, tmp_path, monkeypatch, tiny_umt5, capsys):  # noqa: F811
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "alice"))
    catalogue = hub.load_catalogue()
    dits = {role: write_variant(state, "comfy-scaled-fp8", tmp_path / "comfy" / role)[0].read_bytes()
            for role, state in zip(("dit", "dit_low"), official_pair(31, 16))}
    serve_model(fake_hub, catalogue, "wan2.2-t2v-a14b", dits, tiny_umt5, monkeypatch, tmp_path)
    out = tmp_path / "t2v.mp4"
    code = main(["generate", "a fox", "--model", "wan2.2-t2v-a14b", "--download", "-o", str(out), *SIZE])
    assert code == 0, capsys.readouterr().err
    meta = read_video_metadata(out)
    assert (meta["sampler"], meta["steps"], float(meta["guidance"]), float(meta["guidance_low"]),
            float(meta["shift"]), float(meta["boundary"])) == ("teacher", 40, 4.0, 3.0, 12.0, 0.875)
    # Wan's 40 shifted times t' = 12 t / (1 + 11 t), t = 1 - i/40: the high-noise expert while t' >= 0.875
    times = [12 * (1 - i / 40) / (1 + 11 * (1 - i / 40)) for i in range(40)]
    assert meta["experts"].split(",") == ["high" if t >= 0.875 else "low" for t in times]
    assert meta["experts"].count("high") == 26
    # the same downloaded pair through the ComfyUI model loader and in the app, with the preset
    model = ComfyHost().run("AliceModelLoader", model_name="catalogue/wan2.2-t2v-a14b", precision="fp8_e4m3fn",
                            offload=False, download=False)[0]
    pair = model.dits["teacher"]
    assert (pair.boundary, model.defaults.guidance_low, model.defaults.teacher_steps) == (0.875, 3.0, 40)
    assert all(expert.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn for expert in (pair.high, pair.low))
    from webui.studio import Studio

    studio = Studio(tmp_path / "app-out", models_dir=tmp_path / "app-models")
    assert studio.choice("hub/wan2.2-t2v-a14b").available
