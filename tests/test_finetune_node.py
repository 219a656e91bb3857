"""The "Alice Finetune (LoRA)" node: contract, a run the LoRA loader can use, Cancel + resume, clear input errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from alice_core.errors import AliceError
from alice_core.loading.lora import LORA_METADATA_KEY
from alice_core.train.clips import clips_from_images
from alice_core.train.finetune import CHECKPOINT_NAME, FinetuneConfig, finetune
from alice_core.video_io import write_video

from tests.bundles import random_tiny_bundle
from tests.comfy_host import ComfyFolders, ComfyHost, InterruptProcessingException, load_pack, run_node

MODEL = "random-test/model.json"  # the random bundle's entry in diffusion_models
CAPTION = "a red ball moving up"
FRAMES = 9  # the random bundle's clip length
SETTINGS = dict(rank=2, alpha=4.0, teacher_steps=3, student_steps=3, teacher_lr=1e-3, student_lr=1e-3, batch_size=1,
                seed=0, checkpoint_every=2)


def node_class():
    return load_pack().NODE_CLASS_MAPPINGS["AliceFinetune"]


def training_images(count: int = 2 * FRAMES + 2) -> torch.Tensor:
    """Smooth moving ramps as an IMAGE batch [N, 32, 32, 3] (2 clips of 9 frames and 2 left over), made as an
    upstream node makes it in ComfyUI: an inference tensor."""
    with torch.inference_mode():
        t, y, x = torch.meshgrid(torch.arange(float(count)), torch.arange(32.0), torch.arange(32.0), indexing="ij")
        return torch.stack([(x + 2 * t) % 32 / 32, y / 32, (x + y) / 64], dim=-1)


def node_inputs(**change) -> dict:
    """The node's inputs; a change to None leaves that input unconnected, as ComfyUI does with optional ones."""
    inputs = {"model_name": MODEL, "caption": CAPTION, "lora_name": "style", "restart": False,
              "images": training_images(), **SETTINGS, **change}
    return {name: value for name, value in inputs.items() if value is not None}


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture
def env(tmp_path, monkeypatch):
    """Standalone model folders in tmp with a random bundle in diffusion_models."""
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALICE_OUTPUT_DIR", str(tmp_path / "out"))
    random_tiny_bundle(tmp_path / "home" / "diffusion_models" / "random-test")
    return SimpleNamespace(home=tmp_path / "home", loras=tmp_path / "home" / "loras")


@pytest.fixture(scope="module")
def reference_lora(tmp_path_factory):
    """The LoRA an uninterrupted library run makes from the same bundle weights, clips and settings."""
    folder = tmp_path_factory.mktemp("reference")
    bundle = random_tiny_bundle(folder / "random-test")  # same seed: the same weights as the env fixture's bundle
    clips = clips_from_images(training_images(), CAPTION, FRAMES)
    result = finetune(str(bundle.folder), clips, FinetuneConfig(**SETTINGS), folder / "ref.safetensors",
                      folder / "work")
    return load_file(str(result.student_lora)), load_file(str(result.teacher_lora))


# ---------------------------------------------------------------- inside ComfyUI (its folders)


@pytest.fixture
def comfy(tmp_path):
    """ComfyHost(...) with its own models/user/input folders and a random bundle; .cancel_at(n) presses Cancel at
    progress value n."""
    root = tmp_path / "comfyui"
    random_tiny_bundle(root / "models" / "diffusion_models" / "random-test")
    return lambda: ComfyHost(ComfyFolders(root), throttle=False)


# ---------------------------------------------------------------- the contract


def test_node_is_registered_with_the_finetune_settings_as_inputs(env):
    pack = load_pack()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["AliceFinetune"] == "Alice Finetune (LoRA)"
    cls = node_class()
    assert (cls.CATEGORY, cls.FUNCTION, cls.RETURN_TYPES, cls.RETURN_NAMES) == (
        "Alice", "run", ("STRING", "STRING"), ("lora_name", "teacher_lora_name"))
    assert cls.OUTPUT_NODE and callable(getattr(cls(), cls.FUNCTION))
    spec = cls.INPUT_TYPES()
    assert set(spec) == {"required", "optional"}
    assert spec["optional"]["images"][0] == "IMAGE" and spec["optional"]["clips_folder"][0] == "STRING"
    choices = spec["required"]["model_name"][0]
    assert "alice-tiny" in choices and MODEL in choices
    assert not any(c.startswith("catalogue/") for c in choices)  # single checkpoints cannot be finetuned
    defaults = FinetuneConfig()
    for name in ("rank", "alpha", "teacher_steps", "student_steps", "teacher_lr", "student_lr", "batch_size", "seed",
                 "checkpoint_every"):
        kind, options = spec["required"][name]
        assert kind in ("INT", "FLOAT") and options["default"] == getattr(defaults, name), name
        assert options["min"] <= options["default"] <= options["max"], name
    assert spec["required"]["restart"][0] == "BOOLEAN" and spec["required"]["restart"][1]["default"] is False


# ---------------------------------------------------------------- a run, used by the LoRA loader


def test_image_batch_run_writes_loras_that_the_lora_loader_applies(env, reference_lora, caplog):
    caplog.set_level("INFO")
    names = run_node("AliceFinetune", **node_inputs())
    assert names == ("style.safetensors", "style.teacher.safetensors")
    assert sorted(p.name for p in env.loras.iterdir()) == sorted(names)  # nothing else: no temp files
    assert not (env.home / "alice-finetune" / "style").exists()  # the finished run's checkpoint is gone
    assert "the last 2 of 20 images make no whole clip" in caplog.text
    assert "student LoRA (rCM) step 3/3, loss" in caplog.text
    # The node is the library: the same weights as an uninterrupted library run.
    student = load_file(str(env.loras / names[0]))
    assert student.keys() == reference_lora[0].keys()
    for key, value in student.items():
        torch.testing.assert_close(value, reference_lora[0][key], rtol=0, atol=0)
    with safe_open(str(env.loras / names[0]), framework="pt") as f:
        meta = json.loads(f.metadata()[LORA_METADATA_KEY])
    assert (meta["applies_to"], meta["rank"], meta["clips"], meta["base_model"]) == ("rcm", 2, 2, "random-test")

    loras = load_pack().NODE_CLASS_MAPPINGS["AliceLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0]
    assert names[0] in loras and names[1] not in loras  # the finetune is one entry: its student LoRA's name
    model = run_node("AliceModelLoader", model_name=MODEL, precision="fp32", offload=False, download=False)[0]
    base = {s: d.blocks[0].self_attn.q.weight.clone() for s, d in model.dits.items()}
    teacher = load_file(str(env.loras / names[1]))
    for trained_lora, changed in ((names[0], ("rcm", "teacher")), (names[1], ("teacher",))):
        # the Finetune node's lora_name output brings both files, each to its network; its teacher_lora_name the
        # teacher's alone
        patched = run_node("AliceLoraLoader", model=model, lora_name=loras[0], strength=1.0,
                           trained_lora=trained_lora)[0]
        for network, lora in (("rcm", student), ("teacher", teacher)):
            up, down = lora["blocks.0.self_attn.q.lora_B.weight"], lora["blocks.0.self_attn.q.lora_A.weight"]
            assert up.abs().max() > 0  # trained away from the zero init
            expected = base[network] + (4.0 / 2) * (up @ down) if network in changed else base[network]  # alpha/rank
            torch.testing.assert_close(patched.dits[network].blocks[0].self_attn.q.weight, expected, atol=1e-6,
                                       rtol=0)

    with pytest.raises(AliceError, match="style.safetensors already exists; choose another lora_name, or turn on "
                                         "restart"):
        run_node("AliceFinetune", **node_inputs())


# ---------------------------------------------------------------- Cancel, resume, restart


@pytest.mark.parametrize("cancel_at, during_update", [(1, False), (4, True)],
                         ids=["teacher-stage-between-steps", "student-stage-during-bar-update"])
def test_cancel_checkpoints_and_requeueing_resumes_to_the_same_lora(comfy, reference_lora, cancel_at, during_update):
    # checkpoint_every is 2 and the teacher has 3 steps: steps 1 and 4 (student step 1) get no periodic checkpoint,
    # so resuming there proves the Cancel itself wrote one.
    fake = comfy().cancel_at(cancel_at, during_update)
    with pytest.raises(InterruptProcessingException):
        fake.run("AliceFinetune", node_id="7", **node_inputs())
    assert not fake.interrupted  # the Cancel request is consumed, so the next prompt runs
    assert fake.progress == [("7", i, 6) for i in range(1, cancel_at + (0 if during_update else 1))]
    root = fake.folders.root
    work = root / "user" / "alice-finetune" / "style"
    assert (work / CHECKPOINT_NAME).is_file()
    assert not (root / "models" / "loras" / "style.safetensors").exists()
    assert [(node, sid) for _, node, sid in fake.texts] == [("7", "client-1")] * len(fake.texts)
    assert fake.texts[0][0].startswith("teacher LoRA step 1/3, loss ")
    assert "queue the node again to resume" in fake.texts[-1][0]

    fake = comfy()  # queue the same node again
    names = fake.run("AliceFinetune", node_id="7", **node_inputs())
    assert fake.progress == [("7", i, 6) for i in range(cancel_at + 1, 7)]  # resumed after the cancelled step
    assert fake.texts[-1][0].startswith("student LoRA (rCM) step 3/3, loss ")
    assert not work.exists()
    for file, reference in zip(names, reference_lora):
        for key, value in load_file(str(root / "models" / "loras" / file)).items():
            torch.testing.assert_close(value, reference[key], rtol=0, atol=0)


def test_other_clips_on_a_checkpoint_need_restart_and_a_relative_clips_folder_is_in_comfyui_input(comfy):
    fake = comfy().cancel_at(1)
    with pytest.raises(InterruptProcessingException):
        fake.run("AliceFinetune", **node_inputs())
    root = fake.folders.root
    clips = root / "input" / "clips"
    clips.mkdir(parents=True)
    frames = (training_images(FRAMES).numpy() * 255).astype(np.uint8)
    for i, caption in enumerate(["a ball rolling left", "a ball rolling right"]):
        write_video(frames if i == 0 else frames[:, :, ::-1].copy(), clips / f"clip{i}.mp4", fps=8)
        (clips / f"clip{i}.txt").write_text(caption + "\n")
    folder_run = node_inputs(images=None, caption="", clips_folder="clips", teacher_steps=1, student_steps=1)

    fake = comfy()
    with pytest.raises(AliceError, match="lora_name 'style' has an unfinished run with other clips, settings or base "
                                         "model .*; turn on restart to discard it"):
        fake.run("AliceFinetune", **folder_run)
    assert fake.progress == []
    names = fake.run("AliceFinetune", **{**folder_run, "restart": True})
    assert [value for _, value, _ in fake.progress] == [1, 2]  # started over
    with safe_open(str(root / "models" / "loras" / names[0]), framework="pt") as f:
        meta = json.loads(f.metadata()[LORA_METADATA_KEY])
    assert meta["clips"] == 2 and meta["sample_prompts"] == ["a ball rolling left", "a ball rolling right"]


# ---------------------------------------------------------------- errors


def test_bad_inputs_give_clear_errors(env, tmp_path):
    cases = [
        ({"images": None, "model_name": None}, "input\\(s\\) model_name missing"),
        ({"images": None}, "no training clips; connect an IMAGE batch to 'images' or set 'clips_folder'"),
        ({"images": training_images(5)}, "input 'images' has 5 frames but random-test trains on clips of 9; "
                                         "connect a batch of at least 9"),
        ({"caption": "  "}, "caption is empty; describe what the image batch shows"),
        ({"images": None, "clips_folder": str(tmp_path / "missing")}, "clip folder .*missing does not exist"),
        ({"images": None, "clips_folder": str(tmp_path)}, "holds no videos"),
        ({"teacher_steps": -1}, "input 'teacher_steps' must be between 0 and 100000"),
        ({"model_name": "alice-huge"}, "input 'model_name' is 'alice-huge', which is not available"),
        ({"images": torch.rand(18, 32, 32, 4)}, "input 'images' must be an IMAGE batch"),
    ]
    for bad_name in ("../style", "sub/style", "sub\\style", ".hidden", "", "  ", "style."):
        cases.append(({"lora_name": bad_name}, "lora_name .* must be a plain file name"))
    for change, message in cases:
        with pytest.raises(AliceError, match=message) as caught:
            run_node("AliceFinetune", **node_inputs(**change))
        assert "\n" not in str(caught.value)
    env.loras.mkdir(parents=True)
    (env.loras / "downloaded.teacher.safetensors").write_bytes(b"not ours")  # never overwritten without restart
    with pytest.raises(AliceError, match="downloaded.teacher.safetensors already exists"):
        run_node("AliceFinetune", **node_inputs(lora_name="downloaded.safetensors"))
    assert sorted(p.name for p in env.loras.iterdir()) == ["downloaded.teacher.safetensors"]
    assert not (env.home / "alice-finetune").exists()
