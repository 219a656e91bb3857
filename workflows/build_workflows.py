"""Writes the example workflows in both ComfyUI formats from one description per graph.

    python workflows/build_workflows.py

Each graph becomes NAME.json (UI format: drag it onto ComfyUI, which also lists this folder's files as templates)
and api/NAME.json (API format: POST it to ComfyUI's /prompt, or run it with a graph executor). Widget order and the socket types come from the nodes' own
INPUT_TYPES / RETURN_TYPES, so regenerating after a node changes keeps both files loadable.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@dataclass
class Node:
    id: int
    type: str
    inputs: dict  # input name -> widget value, or (source node id, output index) for a wire
    pos: tuple[int, int]
    title: str | None = None


def load_node_mappings() -> dict:
    """The pack loaded the way ComfyUI loads it (as a package from its root __init__.py), and the ComfyUI core nodes
    the graphs use, as the tests' model of ComfyUI declares them."""
    spec = importlib.util.spec_from_file_location("alice_comfy_pack", ROOT / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    sys.path.insert(0, str(ROOT))
    from tests.comfy_host import CORE_NODES

    return {**pack.NODE_CLASS_MAPPINGS, **CORE_NODES}


def is_widget(spec: tuple) -> bool:
    """A widget on the node, not a socket: a choice list or a plain value type (forceInput makes it a socket)."""
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def declared_inputs(cls) -> dict:
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}


def to_api(nodes: list[Node], mappings: dict) -> dict:
    prompt = {}
    for node in nodes:
        inputs = {name: [str(v[0]), v[1]] if isinstance(v, tuple) else v for name, v in node.inputs.items()}
        title = node.title or mappings[node.type].DISPLAY_NAME
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": title}}
    return prompt


PREVIEW_HEIGHT = 340  # a saved video's preview under the node: alice-tiny's square clips at the node's width


def node_size(cls) -> list[int]:
    """[width, height] as the frontend draws the node, its video preview included (the layout keeps them apart)."""
    inputs = declared_inputs(cls)
    height = 60 + 26 * (len(inputs) + len(cls.RETURN_TYPES))
    return [320, height + (PREVIEW_HEIGHT if cls.__name__ == "AliceSaveVideo" else 0)]


def to_ui(nodes: list[Node], mappings: dict) -> dict:
    links, incoming, outgoing = [], {}, {}
    for node in nodes:
        inputs = declared_inputs(mappings[node.type])
        sockets = [name for name, spec in inputs.items() if not is_widget(spec)]
        for slot, name in enumerate(sockets):
            if name not in node.inputs:  # an optional socket left unconnected
                continue
            source, out_slot = node.inputs[name]
            source_type = mappings[next(n.type for n in nodes if n.id == source)].RETURN_TYPES[out_slot]
            link_id = len(links) + 1
            links.append([link_id, source, out_slot, node.id, slot, source_type])
            incoming[(node.id, name)] = link_id
            outgoing.setdefault((source, out_slot), []).append(link_id)

    ui_nodes = []
    for order, node in enumerate(nodes):
        cls = mappings[node.type]
        inputs = declared_inputs(cls)
        widgets = []
        for name, spec in inputs.items():
            if is_widget(spec):
                widgets.append(node.inputs[name])
                # the frontend gives an INT a "control after generate" widget when it asks, and a seed unless it
                # declines: keep shared seeds fixed
                if len(spec) > 1 and spec[1].get("control_after_generate", name in ("seed", "noise_seed")):
                    widgets.append("fixed")
                if len(spec) > 1 and spec[1].get("image_upload"):
                    widgets.append("image")  # Load Image's upload button stores this value
        ui_nodes.append({
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": node_size(cls),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [
                {"name": name, "type": spec[0], "link": incoming.get((node.id, name))}
                for name, spec in inputs.items() if not is_widget(spec)
            ],
            "outputs": [
                {"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot}
                for slot, (name, kind) in enumerate(zip(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES), cls.RETURN_TYPES))
            ],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": widgets,
            **({"title": node.title} if node.title else {}),
        })
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }


# ---------------------------------------------------------------- the graphs

MODEL = {"model_name": "alice-tiny", "precision": "auto", "offload": False, "download": False, "attention": "sdpa",
         "blocks_on_gpu": 0, "compile": False, "low_noise_model_name": "none", "boundary": 0.0}
TEXT_ENCODER = {"text_encoder": "minilm", "precision": "auto", "device": "default"}
VAE = {"vae_name": "alice-tiny", "precision": "auto"}
DECODE = {"tiled": False, "tile_size": 256, "overlap": 64}
SIZE = {"width": 32, "height": 32, "frames": 9}  # alice-tiny's native size
RCM = {"steps": 4, **SIZE, "sigma_max": 80.0, "mode": "sde"}
SAVE = {"fps": 8, "format": "mp4", "crf": 19}


def t2v_4step() -> list[Node]:
    return [
        Node(1, "AliceModelLoader", MODEL, (0, 0)),
        Node(2, "AliceTextEncoderLoader", TEXT_ENCODER, (0, 320)),
        Node(3, "AliceTextEncode", {"text_encoder": (2, 0), "positive": "a red ball moving to the right",
                                    "negative": ""}, (360, 320)),
        Node(4, "AliceRCMSampler", {"model": (1, 0), "conditioning": (3, 0), "seed": 42, **RCM}, (720, 0)),
        Node(5, "AliceVAELoader", VAE, (720, 380)),
        Node(6, "AliceVAEDecode", {"vae": (5, 0), "samples": (4, 0), **DECODE}, (1080, 0)),
        Node(7, "AliceSaveVideo", {"images": (6, 0), **SAVE, "filename_prefix": "video/alice_t2v"}, (1440, 0)),
    ]


def teacher_vs_student() -> list[Node]:
    prompt = "a blue square moving up"
    return [
        Node(1, "AliceModelLoader", MODEL, (0, 0)),
        Node(2, "AliceTextEncoderLoader", TEXT_ENCODER, (0, 320)),
        Node(3, "AliceTextEncode", {"text_encoder": (2, 0), "positive": prompt, "negative": ""}, (360, 320)),
        Node(4, "AliceTeacherSampler", {"model": (1, 0), "conditioning": (3, 0), "seed": 7, "steps": 50,
                                        "cfg": 3.0, "shift": 3.0, **SIZE,
                                        "guidance_low_noise": -1.0}, (720, 0), "Teacher (50 steps, CFG)"),
        Node(5, "AliceRCMSampler", {"model": (1, 0), "conditioning": (3, 0), "seed": 7, **RCM}, (720, 640),
             "Student (rCM, 4 steps)"),
        Node(6, "AliceVAELoader", VAE, (720, 1040)),
        Node(7, "AliceVAEDecode", {"vae": (6, 0), "samples": (4, 0), **DECODE}, (1080, 0)),
        Node(8, "AliceVAEDecode", {"vae": (6, 0), "samples": (5, 0), **DECODE}, (1080, 640)),
        Node(9, "AliceSaveVideo", {"images": (7, 0), **SAVE, "filename_prefix": "video/alice_teacher"}, (1440, 0)),
        Node(10, "AliceSaveVideo", {"images": (8, 0), **SAVE, "filename_prefix": "video/alice_student"}, (1440, 640)),
    ]


EXAMPLE_LORA = "alice_example_lora.safetensors"  # ships with alice-tiny: alice-tiny learnt azure from 12 clips
AZURE_PROMPT = "one azure ball sliding right"  # a SynthBench azure probe prompt, never a training caption


def lora() -> list[Node]:
    return [
        Node(1, "AliceModelLoader", MODEL, (0, 0)),
        Node(2, "AliceLoraLoader", {"model": (1, 0), "lora_name": EXAMPLE_LORA, "strength": 1.0}, (360, 0)),
        Node(3, "AliceTextEncoderLoader", TEXT_ENCODER, (0, 320)),
        Node(4, "AliceTextEncode", {"text_encoder": (3, 0), "positive": AZURE_PROMPT, "negative": ""}, (360, 320)),
        Node(5, "AliceRCMSampler", {"model": (2, 0), "conditioning": (4, 0), "seed": 42, **RCM}, (720, 0)),
        Node(6, "AliceVAELoader", VAE, (720, 380)),
        Node(7, "AliceVAEDecode", {"vae": (6, 0), "samples": (5, 0), **DECODE}, (1080, 0)),
        Node(8, "AliceSaveVideo", {"images": (7, 0), **SAVE, "filename_prefix": "video/alice_lora"}, (1440, 0)),
    ]


# Small enough to run in a few minutes on a CPU; the shipped example LoRA had 100 + 30 steps on 12 clips.
FINETUNE = {"model_name": "alice-tiny", "caption": "", "lora_name": "my_azure_lora", "rank": 4, "alpha": 4.0,
            "teacher_steps": 40, "student_steps": 4, "teacher_lr": 1e-3, "student_lr": 1e-4, "batch_size": 2,
            "seed": 0, "checkpoint_every": 20, "restart": False, "clips_folder": "alice-tiny/example_clips"}


def finetune() -> list[Node]:
    """Train a LoRA on a folder of clips, then sample with it: clips -> Finetune -> LoRA Loader -> sampler -> video."""
    return [
        Node(1, "AliceFinetune", FINETUNE, (0, 0), "Alice Finetune (clips folder: alice-tiny/example_clips)"),
        Node(2, "AliceModelLoader", MODEL, (0, 560)),
        Node(3, "AliceLoraLoader", {"model": (2, 0), "lora_name": EXAMPLE_LORA, "strength": 1.0,
                                    "trained_lora": (1, 0)}, (400, 0)),
        Node(4, "AliceTextEncoderLoader", TEXT_ENCODER, (400, 300)),
        Node(5, "AliceTextEncode", {"text_encoder": (4, 0), "positive": AZURE_PROMPT, "negative": ""}, (760, 300)),
        Node(6, "AliceRCMSampler", {"model": (3, 0), "conditioning": (5, 0), "seed": 42, **RCM}, (1120, 0)),
        Node(7, "AliceVAELoader", VAE, (1120, 420)),
        Node(8, "AliceVAEDecode", {"vae": (7, 0), "samples": (6, 0), **DECODE}, (1480, 0)),
        Node(9, "AliceSaveVideo", {"images": (8, 0), **SAVE, "filename_prefix": "video/alice_finetune"}, (1840, 0)),
    ]


# The TurboWan2.2 I2V A14B pair of the catalogue, with its Wan2.1 VAE and umT5, under their ComfyUI file names; the
# start picture is ComfyUI's own input/example.png. The preset: 4 steps, sigma_max 200, boundary 0.9, 1280x720.
I2V_MODEL = {**MODEL, "model_name": "TurboWan2.2-I2V-A14B-high-720P.pth", "precision": "auto",
             "low_noise_model_name": "TurboWan2.2-I2V-A14B-low-720P.pth", "boundary": 0.9}
I2V_SAMPLER = {"steps": 4, "width": 1280, "height": 720, "frames": 81, "sigma_max": 200.0, "mode": "sde"}


def i2v_a14b() -> list[Node]:
    """Image-to-video with a Wan2.2 A14B pair: Load Image -> Alice Start Image -> rCM sampler (both experts)."""
    return [
        Node(1, "AliceModelLoader", I2V_MODEL, (0, 0), "Alice Model Loader (TurboWan2.2 I2V A14B pair)"),
        Node(2, "AliceTextEncoderLoader", {**TEXT_ENCODER, "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth"},
             (0, 420)),
        Node(3, "AliceTextEncode", {"text_encoder": (2, 0), "positive": "the camera slowly pushes in as the scene "
                                                                        "comes to life", "negative": ""}, (360, 420)),
        Node(4, "AliceVAELoader", {**VAE, "vae_name": "Wan2.1_VAE.pth"}, (0, 620)),
        Node(5, "LoadImage", {"image": "example.png"}, (0, 800)),
        Node(6, "AliceStartImage", {"conditioning": (3, 0), "vae": (4, 0), "start_image": (5, 0)}, (360, 640)),
        Node(7, "AliceRCMSampler", {"model": (1, 0), "conditioning": (6, 0), "seed": 42, **I2V_SAMPLER}, (720, 0)),
        Node(8, "AliceVAEDecode", {"vae": (4, 0), "samples": (7, 0), **DECODE}, (1080, 0)),
        Node(9, "AliceSaveVideo", {"images": (8, 0), **SAVE, "fps": 16, "filename_prefix": "video/alice_i2v"},
             (1440, 0)),
    ]


WORKFLOWS = {
    "alice_t2v_4step": t2v_4step,
    "alice_teacher_vs_student": teacher_vs_student,
    "alice_lora": lora,
    "alice_finetune": finetune,
    "alice_i2v_a14b": i2v_a14b,
}


def main() -> None:
    mappings = load_node_mappings()
    for name, build in WORKFLOWS.items():
        nodes = build()
        for path, content in ((HERE / f"{name}.json", to_ui(nodes, mappings)),
                              (HERE / "api" / f"{name}.json", to_api(nodes, mappings))):
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(content, indent=2) + "\n")
            tmp.replace(path)
            print(path)


if __name__ == "__main__":
    main()
