"""ComfyUI nodes: the package contract, input errors, equality with the library pipeline, ComfyUI hooks, saving."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from alice_core.bundle import BUNDLED_DIR, DEFAULT_MODEL
from alice_core.errors import AliceError
from alice_core.loading.formats import inspect_checkpoint
from alice_core.loading.quant import is_quantized_linear
from alice_core.models.config import WanDiTConfig, WanVAEConfig
from alice_core.models.dit import WanDiT
from alice_core.models.vae import WanVAE
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.video_io import read_video, read_video_metadata

from tests.bundles import random_tiny_bundle, save_dit
from tests.comfy_host import ComfyFolders, ComfyHost, InterruptProcessingException, load_pack, run_node

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_NODES = {
    "AliceModelLoader", "AliceTextEncoderLoader", "AliceTextEncode", "AliceRCMSampler", "AliceTeacherSampler",
    "AliceVAELoader", "AliceVAEDecode", "AliceSaveVideo", "AliceLoraLoader", "AliceFinetune", "AliceStartImage",
    "AliceCLIPVisionLoader",
}
SOCKET_TYPES = {"ALICE_MODEL", "ALICE_TEXT_ENCODER", "ALICE_CONDITIONING", "ALICE_VAE", "ALICE_CLIP_VISION", "LATENT",
                "IMAGE"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Standalone model folders and output folder in tmp (the nodes' outside-ComfyUI configuration)."""
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALICE_OUTPUT_DIR", str(tmp_path / "out"))
    return SimpleNamespace(models=tmp_path / "home", output=tmp_path / "out")


@pytest.fixture
def random_bundle(env):
    """A random-weight bundle in diffusion_models (space-to-depth stride 4, MiniLM; 32x32, 9 frames)."""
    bundle = random_tiny_bundle(env.models / "diffusion_models" / "random-test")
    return SimpleNamespace(entry="random-test/model.json", bundle=bundle)


def host():
    return load_pack().nodes.host


def generate_with_nodes(entry: str, sampler: str, comfy: ComfyHost | None = None, **settings):
    comfy = comfy or ComfyHost()
    model = comfy.run("AliceModelLoader", model_name=entry, precision="auto", offload=False, download=False)[0]
    encoder = comfy.run("AliceTextEncoderLoader", text_encoder="minilm", precision="auto", device="default")[0]
    cond = comfy.run("AliceTextEncode", text_encoder=encoder, positive="a red ball moving up", negative="blurry")[0]
    node = "AliceRCMSampler" if sampler == "rcm" else "AliceTeacherSampler"
    latent = comfy.run(node, node_id="4", model=model, conditioning=cond, **settings)[0]
    vae = comfy.run("AliceVAELoader", vae_name=entry, precision="auto")[0]
    return comfy.run("AliceVAEDecode", vae=vae, samples=latent, tiled=False, tile_size=256, overlap=64)[0], latent


# ---------------------------------------------------------------- the package


def test_root_package_exports_the_mappings_lazily_without_comfyui():
    pack = load_pack("alice_pack_import_check")
    assert "alice_pack_import_check.nodes" not in sys.modules  # importing the root alone loads nothing
    mappings, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(mappings) == EXPECTED_NODES == set(names)
    assert pack.nodes.__name__ == "alice_pack_import_check.nodes"  # relative: never ComfyUI's top-level `nodes`
    assert all(name.startswith("Alice") for name in names.values())
    for module in ("comfy", "folder_paths", "server"):
        assert module not in sys.modules
    assert not pack.nodes.host.in_comfyui()
    with pytest.raises(AttributeError):
        pack.NOT_A_MAPPING


@pytest.mark.parametrize("node_type", sorted(EXPECTED_NODES))
def test_node_class_contract(node_type):
    cls = load_pack().NODE_CLASS_MAPPINGS[node_type]
    assert cls.CATEGORY == "Alice"
    assert callable(getattr(cls(), cls.FUNCTION))
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert all(t in SOCKET_TYPES or t == "STRING" for t in cls.RETURN_TYPES)
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    for name, input_spec in {**spec["required"], **spec.get("optional", {})}.items():
        assert isinstance(input_spec, tuple) and 1 <= len(input_spec) <= 2, name
        kind, options = input_spec[0], (input_spec[1] if len(input_spec) == 2 else {})
        assert isinstance(options, dict)
        if isinstance(kind, list):
            assert all(isinstance(choice, str) for choice in kind)
            assert options.get("default", kind[0] if kind else None) in (kind or [None])
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
        else:
            assert kind in WIDGET_TYPES | SOCKET_TYPES, (name, kind)
    assert set(spec.get("hidden", {}).values()) <= {"PROMPT", "EXTRA_PNGINFO"}
    for name, input_spec in {**spec["required"], **spec.get("optional", {})}.items():  # every input explained
        assert len(input_spec) == 2 and input_spec[1].get("tooltip", "").strip(), f"{node_type}.{name} has no tooltip"


def test_widget_defaults_and_steps_are_the_bundled_models_own():
    """Not constants in the nodes: alice-tiny's model.json defaults, its size multiple (space-to-depth stride x
    patch) and frame step (temporal stride), read here from the bundle files themselves."""
    bundle = json.loads((BUNDLED_DIR / DEFAULT_MODEL / "model.json").read_text())
    d, ae = bundle["defaults"], bundle["autoencoder"]
    patch = inspect_checkpoint(BUNDLED_DIR / DEFAULT_MODEL / bundle["dits"]["rcm"]).config.patch_size[1]
    multiple = ae["spatial_stride"] * patch
    nodes = load_pack().NODE_CLASS_MAPPINGS
    teacher = nodes["AliceTeacherSampler"].INPUT_TYPES()["required"]
    assert (teacher["cfg"][1]["default"], teacher["shift"][1]["default"], teacher["steps"][1]["default"]) == (
        d["guidance"], d["shift"], d["teacher_steps"])
    assert nodes["AliceSaveVideo"].INPUT_TYPES()["required"]["fps"][1]["default"] == d["fps"]
    for node in ("AliceRCMSampler", "AliceTeacherSampler"):
        spec = nodes[node].INPUT_TYPES()["required"]
        for side in ("width", "height"):
            assert (spec[side][1]["default"], spec[side][1]["step"], spec[side][1]["min"]) == (d[side], multiple, multiple)
        assert (spec["frames"][1]["default"], spec["frames"][1]["step"]) == (d["frames"], ae["temporal_stride"])
    assert multiple == 4  # the UI can enter every size alice-tiny takes

# ---------------------------------------------------------------- errors


def test_bad_node_inputs_give_clear_errors(random_bundle):
    model = run_node("AliceModelLoader", model_name=random_bundle.entry, precision="auto", offload=False,
                     download=False)[0]
    encoder = run_node("AliceTextEncoderLoader", text_encoder="minilm", precision="auto", device="default")[0]
    cond = run_node("AliceTextEncode", text_encoder=encoder, positive="a ball", negative="")[0]
    good = dict(model=model, conditioning=cond, seed=0, steps=4, width=32, height=32, frames=9, sigma_max=80.0,
                mode="sde")
    cases = [
        ({"steps": 7}, "input 'steps' must be between 1 and 4, got 7"),
        ({"mode": "euler"}, "input 'mode' is 'euler', which is not available; choose one of: sde, ode"),
        ({"sigma_max": float("nan")}, "input 'sigma_max' must be a number"),
        ({"seed": "42"}, "input 'seed' must be a whole number"),
        ({"model": "alice-tiny"}, "input 'model' must be an Alice model (from Alice Model Loader), got str"),
        ({"cfg": 3.0}, "unknown input(s) cfg"),
        # checked by the pipeline for this model: the node, the input and a valid value, no CLI flag
        ({"frames": 10}, "Alice rCM Sampler (1-4 steps): frames must be 4k+1 (e.g. 17), got 10; set input 'frames' to 9"),
        ({"width": 36}, "Alice rCM Sampler (1-4 steps): width must be a multiple of 8, got 36; set input 'width' to 32"),
    ]
    for change, message in cases:
        with pytest.raises(AliceError, match=None) as caught:
            run_node("AliceRCMSampler", **{**good, **change})
        assert message in str(caught.value), (change, str(caught.value))
        assert "\n" not in str(caught.value) and "--" not in str(caught.value)
    with pytest.raises(AliceError, match="Alice rCM Sampler .*: input\\(s\\) conditioning missing"):
        run_node("AliceRCMSampler", **{k: v for k, v in good.items() if k != "conditioning"})
    with pytest.raises(AliceError, match="prompt is empty"):
        run_node("AliceTextEncode", text_encoder=encoder, positive="  ", negative="")
    with pytest.raises(AliceError, match="input 'model_name' is 'missing.safetensors', which is not available"):
        run_node("AliceModelLoader", model_name="missing.safetensors", precision="auto", offload=False, download=False)


def test_a_model_without_student_weights_says_which_sampler_to_use(env):
    bundle = random_tiny_bundle(env.models / "diffusion_models" / "teacher-only")
    bundle.dits.pop("rcm")
    bundle.write(replace=True)
    model = run_node("AliceModelLoader", model_name="teacher-only/model.json", precision="auto", offload=False,
                     download=False)[0]
    assert set(model.dits) == {"teacher"}
    encoder = run_node("AliceTextEncoderLoader", text_encoder="minilm", precision="auto", device="default")[0]
    cond = run_node("AliceTextEncode", text_encoder=encoder, positive="a ball", negative="")[0]
    with pytest.raises(AliceError, match="has no weights for the rcm sampler; use the teacher sampler"):
        run_node("AliceRCMSampler", model=model, conditioning=cond, seed=0, steps=4, width=32, height=32, frames=9,
                 sigma_max=80.0, mode="sde")


# ---------------------------------------------------------------- the graph equals the library


@pytest.mark.parametrize("sampler, settings", [
    ("rcm", dict(seed=3, steps=2, width=32, height=32, frames=9, sigma_max=80.0, mode="sde")),
    ("teacher", dict(seed=5, steps=3, cfg=2.5, shift=3.0, width=32, height=48, frames=5)),
])
def test_node_graph_makes_the_same_video_as_the_pipeline(random_bundle, sampler, settings):
    images, latent = generate_with_nodes(random_bundle.entry, sampler, **settings)
    assert images.dtype == torch.float32 and images.shape == (settings["frames"], settings["height"], settings["width"], 3)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert latent["samples"].shape[:2] == (1, 192)

    pipe = load_pipeline(str(random_bundle.bundle.folder))
    reference = pipe.generate(GenerationSettings(
        prompt="a red ball moving up", negative_prompt="blurry", seed=settings["seed"], sampler=sampler,
        steps=settings["steps"], width=settings["width"], height=settings["height"], frames=settings["frames"],
        guidance=settings.get("cfg"), shift=settings.get("shift"), ode=settings.get("mode") == "ode",
    )).frames
    ours = (images * 255).round().to(torch.uint8).numpy().astype(int)
    assert np.abs(ours - reference.astype(int)).max() <= 1


def test_latent_dicts_hold_raw_latents_that_the_vae_decode_node_normalises(env):
    torch.manual_seed(0)
    cfg = WanVAEConfig(base_dim=8, num_res_blocks=1)
    vae = WanVAE(cfg).eval()
    vae_file = env.models / "vae" / "small_wan_vae.safetensors"
    vae_file.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(vae_file))
    assert "small_wan_vae.safetensors" in load_pack().NODE_CLASS_MAPPINGS["AliceVAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    loaded = run_node("AliceVAELoader", vae_name="small_wan_vae.safetensors", precision="fp32")[0]
    assert isinstance(loaded, WanVAE)

    raw = torch.randn(1, 16, 1, 12, 12)
    # ComfyUI's Wan21 latent format: the model sees (raw - mean) / std per channel, so LATENT holds raw latents.
    mean = torch.tensor(cfg.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)
    with torch.inference_mode():
        expected = (vae.decode((raw - mean) / std)[0].permute(1, 2, 3, 0) + 1) / 2
    images = run_node("AliceVAEDecode", vae=loaded, samples={"samples": raw}, tiled=False, tile_size=256, overlap=64)[0]
    assert images.shape == (1, 96, 96, 3)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)

    tiled = run_node("AliceVAEDecode", vae=loaded, samples={"samples": raw}, tiled=True, tile_size=64, overlap=32)[0]
    assert tiled.shape == images.shape and 0 < (tiled - images).abs().max() < 0.5  # tiles differ a little at seams
    with pytest.raises(AliceError, match="overlap < tile_size"):
        run_node("AliceVAEDecode", vae=loaded, samples={"samples": raw}, tiled=True, tile_size=64, overlap=64)
    with pytest.raises(AliceError, match="has 768 channels but the Wan2.1 VAE takes 16"):
        run_node("AliceVAEDecode", vae=loaded, samples={"samples": torch.zeros(1, 768, 1, 8, 8)}, tiled=False,
                 tile_size=256, overlap=64)


# ---------------------------------------------------------------- loaders


def test_model_loader_single_checkpoints_and_catalogue(env):
    folder = env.models / "diffusion_models"
    folder.mkdir(parents=True)
    wan_like = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=384,
                            text_len=32)
    save_dit(WanDiT(wan_like), folder / "tiny_wan.safetensors")
    save_dit(WanDiT(WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=32, out_dim=32,
                                 text_dim=384, text_len=32)), folder / "wrong_channels.safetensors")
    choices = load_pack().NODE_CLASS_MAPPINGS["AliceModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert {"alice-tiny", "tiny_wan.safetensors", "catalogue/rcm-wan2.1-t2v-1.3b"} <= set(choices)

    model = run_node("AliceModelLoader", model_name="tiny_wan.safetensors", precision="auto", offload=True,
                     download=False)[0]
    assert model.dits["rcm"] is model.dits["teacher"]  # one checkpoint serves both samplers
    assert model.latent_space.latent_channels == 16 and model.offload_device == torch.device("cpu")

    quantized = run_node("AliceModelLoader", model_name="tiny_wan.safetensors", precision="fp8_e4m3fn",
                         offload=False, download=False)[0]
    assert any(is_quantized_linear(m) for m in quantized.dits["rcm"].modules())

    # 48 channels are TI2V-5B's (the Wan2.2 VAE's latents: tests/test_ti2v_nodes.py); 32 are no Wan VAE's
    with pytest.raises(AliceError, match="takes 32 latent channels but the Wan2.1 VAE has 16"):
        run_node("AliceModelLoader", model_name="wrong_channels.safetensors", precision="auto", offload=False,
                 download=False)
    with pytest.raises(AliceError, match="download"):  # never fetched without the toggle
        run_node("AliceModelLoader", model_name="catalogue/rcm-wan2.1-t2v-1.3b", precision="auto", offload=False,
                 download=False)


def test_text_encoder_loader_lists_umt5_folders_once(env):
    folder = env.models / "text_encoders"
    (folder / "umt5-xxl").mkdir(parents=True)
    (folder / "umt5-xxl" / "config.json").write_text("{}")
    for name in ("umt5-xxl/model-00001-of-00002.safetensors", "umt5-xxl/model-00002-of-00002.safetensors",
                 "models_t5_umt5-xxl-enc-bf16.pth"):
        (folder / name).write_bytes(b"")
    choices = load_pack().NODE_CLASS_MAPPINGS["AliceTextEncoderLoader"].INPUT_TYPES()["required"]["text_encoder"][0]
    assert choices == ["minilm", "models_t5_umt5-xxl-enc-bf16.pth", "umt5-xxl/config.json"]
    encoder = run_node("AliceTextEncoderLoader", text_encoder="minilm", precision="auto", device="cpu")[0]
    assert encoder.dim == 384


def write_lora(path: Path, dim: int, seed: int, rank: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A PEFT-style LoRA on the first block's query projection; returns (up, down)."""
    g = torch.Generator().manual_seed(seed)
    down, up = torch.randn(rank, dim, generator=g) * 0.1, torch.randn(dim, rank, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": down,
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": up}, str(path))
    return up, down


def test_lora_loaders_chain_and_leave_their_input_model_unchanged(random_bundle, env):
    first = write_lora(env.models / "loras" / "first.safetensors", dim=32, seed=1)
    second = write_lora(env.models / "loras" / "second.safetensors", dim=32, seed=2)
    model = run_node("AliceModelLoader", model_name=random_bundle.entry, precision="fp32", offload=False,
                     download=False)[0]
    before = {s: d.blocks[0].self_attn.q.weight.clone() for s, d in model.dits.items()}

    once = run_node("AliceLoraLoader", model=model, lora_name="first.safetensors", strength=1.0)[0]
    twice = run_node("AliceLoraLoader", model=once, lora_name="second.safetensors", strength=0.5)[0]
    for sampler, dit in twice.dits.items():
        expected = before[sampler] + first[0] @ first[1] + 0.5 * (second[0] @ second[1])
        torch.testing.assert_close(dit.blocks[0].self_attn.q.weight, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.dits[sampler].blocks[0].self_attn.q.weight, before[sampler], atol=0, rtol=0)
    assert twice.loras == (("first.safetensors", 1.0), ("second.safetensors", 0.5))

    save_file({"unrelated.weight": torch.zeros(2)}, str(env.models / "loras" / "unrelated.safetensors"))
    with pytest.raises(AliceError, match="none of its 1 keys fit 'random-test'"):
        run_node("AliceLoraLoader", model=model, lora_name="unrelated.safetensors", strength=1.0)


# ---------------------------------------------------------------- inside ComfyUI: progress and cancel


def test_progress_bar_ticks_per_step_and_cancel_stops_between_steps(random_bundle):
    assert host().step_progress(4) is None and host().cancel_check() is None  # no-ops outside ComfyUI
    rcm = dict(seed=0, steps=3, width=32, height=32, frames=9, sigma_max=80.0, mode="ode")
    teacher = dict(seed=0, steps=4, cfg=2.0, shift=3.0, width=32, height=32, frames=9)

    comfy = ComfyHost()
    generate_with_nodes(random_bundle.entry, "rcm", comfy, **rcm)
    assert comfy.updates == [("4", 1, 3), ("4", 2, 3), ("4", 3, 3)]
    assert comfy.progress[0] == ("4", 1, 3) and comfy.progress[-1] == ("4", 3, 3)  # first and final always shown
    comfy = ComfyHost(throttle=False)
    generate_with_nodes(random_bundle.entry, "teacher", comfy, **teacher)
    assert comfy.progress == [("4", i, 4) for i in range(1, 5)]

    comfy = ComfyHost().cancel_at(2)  # Cancel pressed after the second step
    with pytest.raises(InterruptProcessingException):
        generate_with_nodes(random_bundle.entry, "teacher", comfy, **teacher)
    assert comfy.updates == [("4", 1, 4), ("4", 2, 4)]  # stopped before the third step
    assert not comfy.interrupted  # consumed: the next prompt runs


def test_every_node_runs_under_the_executors_inference_mode(random_bundle):
    """ComfyUI runs prompts inside torch.inference_mode(): outputs are inference tensors, and a later node gets
    them (and models built under it) as inputs."""
    images, latent = generate_with_nodes(random_bundle.entry, "rcm", seed=0, steps=2, width=32, height=32, frames=9,
                                         sigma_max=80.0, mode="sde")
    assert images.is_inference() and latent["samples"].is_inference()


def test_sampler_sends_a_preview_of_x0_every_step(random_bundle):
    """ComfyUI's progress bar receives ("JPEG", PIL image, max size) each step; for alice-tiny's latent the last
    preview is a frame of the exact decode (by the VAE node): the first of the result's middle latent frame."""
    comfy = ComfyHost(throttle=False)
    _, latent = generate_with_nodes(random_bundle.entry, "rcm", comfy, seed=1, steps=3, width=32, height=32, frames=9,
                                    sigma_max=80.0, mode="sde")
    previews = [p for p in comfy.previews if p is not None]
    assert comfy.updates == [("4", 1, 3), ("4", 2, 3), ("4", 3, 3)] and len(previews) == 3
    assert all(p[0] == "JPEG" and p[1].size == (32, 32) and p[2] == 512 for p in previews)
    assert len({p[1].tobytes() for p in previews}) == 3  # each step shows its own estimate
    mid = latent["samples"].shape[2] // 2
    vae = comfy.run("AliceVAELoader", vae_name=random_bundle.entry, precision="auto")[0]
    frames = comfy.run("AliceVAEDecode", vae=vae, samples=latent, tiled=False, tile_size=256, overlap=64)[0]
    frame = frames[1 + (mid - 1) * (len(frames) - 1) // (latent["samples"].shape[2] - 1)]  # 1 + (mid - 1) * stride
    expected = (frame.numpy() * 255).round().astype(np.uint8)
    assert np.abs(np.asarray(previews[-1][1]).astype(int) - expected).max() <= 1


# ---------------------------------------------------------------- saving


def test_save_video_writes_each_format_with_the_workflow_embedded(env):
    # smooth colour ramps that drift over time: codecs keep them well, unlike per-pixel noise
    t, y, x = torch.meshgrid(torch.arange(9.0), torch.arange(32.0), torch.arange(48.0), indexing="ij")
    images = torch.stack([(x + 3 * t) / 80, y / 32, 1 - (x + y) / 80], dim=-1).clamp(0, 1)
    prompt = {"1": {"class_type": "AliceSaveVideo", "inputs": {"fps": 8}}}
    workflow = {"nodes": [{"id": 1, "type": "AliceSaveVideo"}], "links": []}
    paths = []
    for fmt in ("mp4", "webm", "gif", "mp4"):
        out = run_node("AliceSaveVideo", images=images, fps=8, format=fmt, crf=0, filename_prefix="video/test",
                       prompt=prompt, extra_pnginfo={"workflow": workflow})
        path = Path(out["result"][0])
        paths.append(path)
        assert path.parent == env.output / "video" and path.suffix == f".{fmt}"
        assert out["ui"] == {"images": [{"filename": path.name, "subfolder": "video", "type": "output"}],
                             "animated": (True,)}
        frames, fps = read_video(path)
        assert frames.shape == (9, 32, 48, 3)
        if fmt == "mp4":
            assert fps == 8 and np.abs(frames / 255.0 - images.numpy()).mean() < 0.05
        metadata = read_video_metadata(path)
        assert json.loads(metadata["prompt"]) == prompt and json.loads(metadata["workflow"]) == workflow
    assert len(set(paths)) == 4  # a second mp4 with the same prefix gets the next number

    bad = [({"filename_prefix": "../outside"}, "must stay inside the output folder"),
           ({"format": "gif", "fps": 60}, "GIF plays at most 50 fps"),
           ({"crf": 60}, "crf for .mp4 must be an integer from 0 to 51"),
           ({"images": torch.rand(9, 32, 48, 4)}, "input 'images' must be an IMAGE batch")]
    for change, message in bad:
        with pytest.raises(AliceError, match=message):
            run_node("AliceSaveVideo", **{"images": images, "fps": 8, "format": "mp4", "crf": 19,
                                          "filename_prefix": "video/bad", **change})
    assert sorted(p.name for p in (env.output / "video").iterdir()) == sorted(p.name for p in paths)


def test_save_video_uses_comfyui_output_folder_and_respects_disable_metadata(tmp_path):
    (tmp_path / "output" / "video").mkdir(parents=True)
    (tmp_path / "output" / "video" / "alice_00002_.mp4").write_bytes(b"")
    comfy = ComfyHost(ComfyFolders(tmp_path), disable_metadata=True)
    out = comfy.run("AliceSaveVideo", images=torch.rand(5, 16, 16, 3), fps=16, format="mp4", crf=19,
                    filename_prefix="video/alice", prompt={"1": {}}, extra_pnginfo={"workflow": {}})
    assert Path(out["result"][0]) == tmp_path / "output" / "video" / "alice_00003_.mp4"
    assert out["ui"]["images"] == [{"filename": "alice_00003_.mp4", "subfolder": "video", "type": "output"}]
    assert "prompt" not in read_video_metadata(out["result"][0])
