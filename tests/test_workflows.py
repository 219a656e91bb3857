"""Shareable workflows: UI-format files are consistent, API twins match them, and every API workflow runs end to end
through a small graph executor (ComfyUI's execution model) and writes a real video."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from alice_core.bundle import BUNDLED_DIR, DEFAULT_MODEL, ModelBundle, bundled_loras
from alice_core.errors import AliceError
from alice_core.loading.formats import inspect_checkpoint
from alice_core.loading.lora import read_lora_metadata
from alice_core.video_io import read_video, read_video_metadata
from alice_core.world import attribute_probe_prompts
from alice_core.world.detector import analyse_clip, check_colour

from tests.bundles import random_tiny_bundle
from tests.comfy_host import ComfyFolders, ComfyHost, node_classes, topological_order
from tests.test_expert_pairs import official_state
from tests.test_formats import write_variant
from tests.test_nodes import write_lora
from tests.test_text_encoders import tiny_umt5, wan_t5_state  # noqa: F401  (fixture: a tiny umT5 and tokenizer)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
REQUIRED = ("alice_t2v_4step", "alice_teacher_vs_student", "alice_lora", "alice_finetune", "alice_i2v_a14b")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SAMPLER_OF_NODE = {"AliceRCMSampler": "rcm", "AliceTeacherSampler": "teacher"}
FAST_TEACHER_STEPS = 4  # the fast test caps teacher steps; the slow test runs the files as shipped
FAST_FINETUNE = {"teacher_steps": 2, "student_steps": 1}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Standalone model and output folders in tmp (where the nodes look outside ComfyUI)."""
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALICE_OUTPUT_DIR", str(tmp_path / "out"))
    return SimpleNamespace(models=tmp_path / "home", output=tmp_path / "out")


def mappings() -> dict:
    return node_classes()  # the pack's nodes and ComfyUI's core Load Image


def declared(node_type: str) -> dict:
    spec = mappings()[node_type].INPUT_TYPES()
    return {**spec["required"], **spec.get("optional", {})}


def is_widget(input_spec: tuple) -> bool:
    options = input_spec[1] if len(input_spec) > 1 else {}
    return (isinstance(input_spec[0], list) or input_spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def is_file_list(widget: str) -> bool:
    """A combo listing the files of a folder (models, ComfyUI's input), which differ from machine to machine."""
    return widget.endswith("_name") or widget in ("text_encoder", "image")


def expected_widget_values(node_type: str) -> list[str]:
    """Widget names in the order ComfyUI's frontend stores their values; a seed's "control after generate"
    value follows it, and so does an image combo's upload button. The frontend (useIntWidget) gives an INT
    input that control unless it declares control_after_generate false, and by default to any named seed or
    noise_seed."""
    names = []
    for name, spec in declared(node_type).items():
        if is_widget(spec):
            names.append(name)
            if len(spec) > 1 and spec[1].get("control_after_generate", name in ("seed", "noise_seed")):
                names.append(f"{name}:control_after_generate")
            if len(spec) > 1 and spec[1].get("image_upload"):
                names.append(f"{name}:upload")
    return names


# ---------------------------------------------------------------- files


def test_required_workflows_exist_in_both_formats_and_are_documented():
    readme = (WORKFLOWS.parent / "README.md").read_text()
    for name in REQUIRED:
        assert (WORKFLOWS / f"{name}.json").is_file() and (WORKFLOWS / "api" / f"{name}.json").is_file()
    for path in UI_FILES:
        assert f"| [`{path.name}`](" in readme, f"README.md's workflow table lacks {path.name}"
    assert [p.name for p in UI_FILES] == [p.name for p in API_FILES]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_consistent(path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    assert workflow["last_node_id"] >= max(nodes) and workflow["last_link_id"] >= max(links)
    assert len(nodes) == len(workflow["nodes"]) and len(links) == len(workflow["links"])

    for node in nodes.values():
        assert node["type"] in mappings(), f"node {node['id']}: unknown type {node['type']}"
        spec = declared(node["type"])
        sockets = [(name, s[0]) for name, s in spec.items() if not is_widget(s)]
        assert [(i["name"], i["type"]) for i in node["inputs"]] == sockets, f"node {node['id']} sockets"
        widgets = expected_widget_values(node["type"])
        assert len(node["widgets_values"]) == len(widgets), f"node {node['id']}: values for {widgets}"
        for name, value in zip(widgets, node["widgets_values"]):
            if name.endswith(":control_after_generate"):
                assert value in ("fixed", "increment", "decrement", "randomize")
            elif name.endswith(":upload"):
                assert value == "image"
            elif isinstance(spec[name][0], list) and spec[name][0] and not is_file_list(name):
                assert value in spec[name][0], f"node {node['id']}: {name}={value!r}"  # fixed choice lists
        returns = mappings()[node["type"]].RETURN_TYPES
        assert [o["type"] for o in node["outputs"]] == list(returns)
        for slot, output in enumerate(node["outputs"]):
            for link_id in output["links"]:
                assert links[link_id][1:3] == [node["id"], slot]
        required = mappings()[node["type"]].INPUT_TYPES()["required"]
        for slot, socket in enumerate(node["inputs"]):
            if socket["link"] is None:  # only optional sockets may stay unconnected
                assert socket["name"] not in required, f"node {node['id']}: input {socket['name']} is not connected"
                continue
            assert links[socket["link"]][3:5] == [node["id"], slot]

    for link_id, source, source_slot, target, target_slot, kind in links.values():
        assert mappings()[nodes[source]["type"]].RETURN_TYPES[source_slot] == kind, f"link {link_id}"
        assert nodes[target]["inputs"][target_slot]["type"] == kind, f"link {link_id}"


def ui_to_api(workflow: dict) -> dict:
    """What ComfyUI's frontend queues for a UI workflow: widget values by name, wires as [node_id, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        names = expected_widget_values(node["type"])
        inputs = {n: v for n, v in zip(names, node["widgets_values"]) if ":" not in n}
        for socket in node["inputs"]:
            if socket["link"] is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_nodes_do_not_overlap(path):
    """Node boxes (a Save Video node's box includes its preview) stay apart, so no preview covers a node."""
    boxes = [(n["id"], *n["pos"], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in json.loads(path.read_text())["nodes"]]
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_is_the_same_graph(path):
    api = json.loads((WORKFLOWS / "api" / path.name).read_text())
    stripped = {nid: {k: v for k, v in node.items() if k != "_meta"} for nid, node in api.items()}
    assert ui_to_api(json.loads(path.read_text())) == stripped


# ---------------------------------------------------------------- the executor


def execute(prompt: dict, extra_pnginfo: dict | None = None) -> tuple[dict, dict]:
    """The graph run as ComfyUI's executor runs it (inference mode, progress and interrupt hooks)."""
    return ComfyHost().execute(prompt, extra_pnginfo)


def test_executor_orders_by_links_and_rejects_broken_graphs():
    graph = {"3": {"inputs": {"a": ["1", 0], "b": ["2", 0]}}, "1": {"inputs": {"x": ["2", 0]}}, "2": {"inputs": {}}}
    assert topological_order(graph) == ["2", "1", "3"]
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"1": {"inputs": {"a": ["2", 0]}}, "2": {"inputs": {"a": ["1", 0]}}})
    with pytest.raises(ValueError, match="missing node 9"):
        topological_order({"1": {"inputs": {"a": ["9", 0]}}})


# ---------------------------------------------------------------- running every API workflow


I2V_FAST_SIZE = {"width": 48, "height": 32, "frames": 5}  # the fast test's video; the stand-ins take any size


def i2v_stand_ins(prompt: dict, root: Path, umt5) -> None:
    """Small random-weight files under the ComfyUI names the image-to-video workflow loads (the TurboWan2.2 pair in
    its .pth layout, the Wan2.1 VAE, Wan's umT5 .pth with its tokenizer in google/umt5-xxl/) and its start image
    in ComfyUI's input folder."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image

    from alice_core.models.config import WanVAEConfig
    from alice_core.models.vae import WanVAE

    umt5_root, umt5_model, _ = umt5
    models = root / "models"
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "AliceModelLoader":
            for seed, key in enumerate(("model_name", "low_noise_model_name"), 1):
                written, _ = write_variant(official_state(seed), "turbodiffusion", root / f"expert{seed}")
                (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
                written.rename(models / "diffusion_models" / inputs[key])
        elif node["class_type"] == "AliceTextEncoderLoader":
            folder = models / "text_encoders"
            shutil.copytree(umt5_root / "tokenizer", folder / "google" / "umt5-xxl")
            torch.save(wan_t5_state(umt5_model), folder / inputs["text_encoder"])
        elif node["class_type"] == "AliceVAELoader":
            (models / "vae").mkdir(parents=True, exist_ok=True)
            vae = WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1))
            torch.save(vae.state_dict(), models / "vae" / inputs["vae_name"])
        elif node["class_type"] == "LoadImage":
            (root / "input").mkdir(parents=True, exist_ok=True)
            picture = np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)
            Image.fromarray(picture).save(root / "input" / inputs["image"])


def prepared(name: str, models: Path, fast: bool) -> tuple[dict, dict]:
    """The API workflow ready to run here: with the bundled model when it has the samplers the graph uses (else a
    random-weight bundle, which has both), the LoRA the graph names in the loras folder, and (fast) capped
    teacher steps. Also returns the UI twin, which the save nodes embed."""
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    needed = {SAMPLER_OF_NODE[n["class_type"]] for n in prompt.values() if n["class_type"] in SAMPLER_OF_NODE}
    bundle = ModelBundle.read(BUNDLED_DIR / DEFAULT_MODEL)
    if not needed <= set(bundle.dits):
        bundle = random_tiny_bundle(models / "diffusion_models" / "random-test")
    for node in prompt.values():
        inputs = node["inputs"]
        if bundle.folder.parent != BUNDLED_DIR and node["class_type"] in ("AliceModelLoader", "AliceVAELoader"):
            inputs["model_name" if "model_name" in inputs else "vae_name"] = "random-test/model.json"
        if node["class_type"] == "AliceLoraLoader" and bundle.folder.parent != BUNDLED_DIR:
            # the shipped example LoRA is for alice-tiny: a random bundle gets a random LoRA of its size
            dim = inspect_checkpoint(next(iter(bundle.dits.values()))).config.dim
            write_lora(models / "loras" / inputs["lora_name"], dim=dim, seed=0)
        if fast and node["class_type"] == "AliceTeacherSampler":
            inputs["steps"] = min(inputs["steps"], FAST_TEACHER_STEPS)
        if fast and node["class_type"] == "AliceFinetune":
            inputs.update(FAST_FINETUNE)
    return prompt, workflow


def check_videos(prompt: dict, workflow: dict, outputs: dict, ui: dict) -> None:
    saves = [nid for nid, node in prompt.items() if node["class_type"] == "AliceSaveVideo"]
    assert saves and set(ui) == set(saves)
    for nid in saves:
        path = Path(outputs[nid][0])
        assert ui[nid]["images"][0]["filename"] == path.name and ui[nid]["animated"] == (True,)
        frames, fps = read_video(path)
        sampler = next(prompt[src]["inputs"] for src in _upstream(prompt, nid) if src in prompt
                       and prompt[src]["class_type"] in SAMPLER_OF_NODE)
        assert frames.shape == (sampler["frames"], sampler["height"], sampler["width"], 3)
        assert fps == prompt[nid]["inputs"]["fps"]
        assert frames.std() > 1.0  # a real picture, not a constant fill
        metadata = read_video_metadata(path)
        assert json.loads(metadata["prompt"]) == prompt and json.loads(metadata["workflow"]) == workflow


def _upstream(prompt: dict, nid: str) -> list[str]:
    seen, todo = [], [nid]
    while todo:
        for value in prompt[todo.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in seen:
                seen.append(value[0])
                todo.append(value[0])
    return seen


@pytest.mark.parametrize("name", [p.stem for p in API_FILES])
def test_api_workflow_runs_end_to_end_and_writes_videos(name, env, request):
    if name.startswith("alice_i2v"):  # no image-to-video model ships: stand-ins under the catalogue's names
        prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
        workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
        root = env.models.parent / "ComfyUI"
        i2v_stand_ins(prompt, root, request.getfixturevalue("tiny_umt5"))
        for node in prompt.values():
            if node["class_type"] == "AliceRCMSampler":
                node["inputs"].update(I2V_FAST_SIZE)
        outputs, ui = ComfyHost(ComfyFolders(root)).execute(prompt, {"workflow": workflow})
        check_videos(prompt, workflow, outputs, ui)
        return
    prompt, workflow = prepared(name, env.models, fast=True)
    outputs, ui = execute(prompt, {"workflow": workflow})
    check_videos(prompt, workflow, outputs, ui)
    if name == "alice_finetune":  # the LoRA files only; the run's checkpoint lives outside the LoRA folder
        assert sorted(p.name for p in (env.models / "loras").iterdir()) == [
            "my_azure_lora.safetensors", "my_azure_lora.teacher.safetensors"]


def test_the_example_lora_ships_for_the_bundled_model_and_makes_its_prompt_azure(env):
    """alice_lora.json out of the box: its LoRA ships with alice-tiny (small), fits every key, and turns the
    workflow's held-out azure prompt azure (SynthBench's colour check), which the base model does not."""
    shipped = bundled_loras()["alice_example_lora.safetensors"]
    assert shipped.stat().st_size <= 2 * 1024 * 1024
    meta = read_lora_metadata(shipped)
    assert (meta["base_model"], meta["applies_to"]) == (DEFAULT_MODEL, "rcm")
    prompt, workflow = prepared("alice_lora", env.models, fast=True)
    assert not (env.models / "loras").exists()  # nothing written: the shipped file is used
    text = next(n["inputs"]["positive"] for n in prompt.values() if n["class_type"] == "AliceTextEncode")
    assert text in attribute_probe_prompts("azure")  # never a training caption
    outputs, ui = execute(prompt, {"workflow": workflow})
    check_videos(prompt, workflow, outputs, ui)
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "AliceSaveVideo")
    assert check_colour(analyse_clip(read_video(outputs[save][0])[0]), "azure")
    lora = next(n for n in prompt.values() if n["class_type"] == "AliceLoraLoader")
    lora["inputs"]["strength"] = 0.0  # the same graph without the LoRA's effect
    outputs, _ = execute(prompt, {"workflow": workflow})
    assert not check_colour(analyse_clip(read_video(outputs[save][0])[0]), "azure")


@pytest.mark.slow
def test_the_finetune_workflow_as_shipped_runs_on_the_bundled_model(env):
    prompt, workflow = prepared("alice_finetune", env.models, fast=False)
    start = time.perf_counter()
    outputs, ui = execute(prompt, {"workflow": workflow})
    check_videos(prompt, workflow, outputs, ui)
    assert time.perf_counter() - start < 15 * 60  # minutes on a CPU


def test_the_bundled_model_runs_through_the_t2v_graph(env):
    """alice_t2v_4step with the real bundled alice-tiny; while the bundle has no student yet, its teacher stands in
    for the rCM sampler node (2 steps, no CFG: fast), so the bundled weights still go through every other node."""
    prompt = json.loads((WORKFLOWS / "api" / "alice_t2v_4step.json").read_text())
    assert {n["inputs"].get("model_name") for n in prompt.values()} >= {DEFAULT_MODEL}
    if "rcm" not in ModelBundle.read(BUNDLED_DIR / DEFAULT_MODEL).dits:
        for node in prompt.values():
            if node["class_type"] == "AliceRCMSampler":
                kept = {k: node["inputs"][k] for k in ("model", "conditioning", "seed", "width", "height", "frames")}
                node.update(class_type="AliceTeacherSampler", inputs={**kept, "steps": 2, "cfg": 1.0, "shift": 3.0})
    outputs, ui = execute(prompt, {"workflow": {}})
    check_videos(prompt, {}, outputs, ui)


@pytest.mark.slow
def test_teacher_vs_student_as_shipped_with_the_bundled_model(env):
    prompt, workflow = prepared("alice_teacher_vs_student", env.models, fast=False)
    if any(n["inputs"].get("model_name") == "random-test/model.json" for n in prompt.values()):
        pytest.skip("the bundled alice-tiny has no distilled student (rcm) weights yet")
    outputs, ui = execute(prompt, {"workflow": workflow})
    check_videos(prompt, workflow, outputs, ui)


def test_a_bad_value_in_a_workflow_stops_with_the_node_and_input_named(env):
    prompt, _ = prepared("alice_t2v_4step", env.models, fast=True)
    sampler = next(n for n in prompt.values() if n["class_type"] == "AliceRCMSampler")
    sampler["inputs"]["steps"] = 8
    with pytest.raises(AliceError, match=r"Alice rCM Sampler \(1-4 steps\): input 'steps' must be between 1 and 4"):
        execute(prompt, {})
