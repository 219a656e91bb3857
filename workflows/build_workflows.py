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
    """The pack loaded the way ComfyUI loads it: as a package from its root __init__.py."""
    spec = importlib.util.spec_from_file_location("alice_comfy_pack", ROOT / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    return pack.NODE_CLASS_MAPPINGS


def is_widget(spec: tuple) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


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


def to_ui(nodes: list[Node], mappings: dict) -> dict:
    links, incoming, outgoing = [], {}, {}
    for node in nodes:
        inputs = declared_inputs(mappings[node.type])
        sockets = [name for name, spec in inputs.items() if not is_widget(spec)]
        for slot, name in enumerate(sockets):
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
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    widgets.append("fixed")  # the seed widget's "control after generate": keep shared seeds
        ui_nodes.append({
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": [320, 60 + 26 * (len(inputs) + len(cls.RETURN_TYPES))],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [
                {"name": name, "type": spec[0], "link": incoming[(node.id, name)]}
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
         "blocks_on_gpu": 0, "compile": False}
TEXT_ENCODER = {"text_encoder": "minilm", "precision": "auto", "device": "default"}
VAE = {"vae_name": "alice-tiny", "precision": "auto"}
DECODE = {"tiled": False, "tile_size": 256, "overlap": 64}
SIZE = {"width": 32, "height": 32, "frames": 9}  # alice-tiny's native size
RCM = {"steps": 4, **SIZE, "sigma_max": 80.0, "mode": "sde"}
SAVE = {"fps": 8, "format": "mp4", "crf": 19}


def t2v_4step() -> list[Node]:
    return [
        Node(1, "AliceModelLoader", MODEL, (0, 0)),
        Node(2, "AliceTextEncoderLoader", TEXT_ENCODER, (0, 200)),
        Node(3, "AliceTextEncode", {"text_encoder": (2, 0), "positive": "a red ball moving to the right",
                                    "negative": ""}, (360, 200)),
        Node(4, "AliceRCMSampler", {"model": (1, 0), "conditioning": (3, 0), "seed": 42, **RCM}, (720, 0)),
        Node(5, "AliceVAELoader", VAE, (720, 380)),
        Node(6, "AliceVAEDecode", {"vae": (5, 0), "samples": (4, 0), **DECODE}, (1080, 0)),
        Node(7, "AliceSaveVideo", {"images": (6, 0), **SAVE, "filename_prefix": "video/alice_t2v"}, (1440, 0)),
    ]


def teacher_vs_student() -> list[Node]:
    prompt = "a blue square moving up"
    return [
        Node(1, "AliceModelLoader", MODEL, (0, 0)),
        Node(2, "AliceTextEncoderLoader", TEXT_ENCODER, (0, 200)),
        Node(3, "AliceTextEncode", {"text_encoder": (2, 0), "positive": prompt, "negative": ""}, (360, 200)),
        Node(4, "AliceTeacherSampler", {"model": (1, 0), "conditioning": (3, 0), "seed": 7, "steps": 50,
                                        "cfg": 3.0, "shift": 3.0, **SIZE}, (720, 0), "Teacher (50 steps, CFG)"),
        Node(5, "AliceRCMSampler", {"model": (1, 0), "conditioning": (3, 0), "seed": 7, **RCM}, (720, 420),
             "Student (rCM, 4 steps)"),
        Node(6, "AliceVAELoader", VAE, (720, 820)),
        Node(7, "AliceVAEDecode", {"vae": (6, 0), "samples": (4, 0), **DECODE}, (1080, 0)),
        Node(8, "AliceVAEDecode", {"vae": (6, 0), "samples": (5, 0), **DECODE}, (1080, 420)),
        Node(9, "AliceSaveVideo", {"images": (7, 0), **SAVE, "filename_prefix": "video/alice_teacher"}, (1440, 0)),
        Node(10, "AliceSaveVideo", {"images": (8, 0), **SAVE, "filename_prefix": "video/alice_student"}, (1440, 420)),
    ]


def lora() -> list[Node]:
    return [
        Node(1, "AliceModelLoader", MODEL, (0, 0)),
        Node(2, "AliceLoraLoader", {"model": (1, 0), "lora_name": "alice_example_lora.safetensors",
                                    "strength": 1.0}, (360, 0)),
        Node(3, "AliceTextEncoderLoader", TEXT_ENCODER, (0, 200)),
        Node(4, "AliceTextEncode", {"text_encoder": (3, 0), "positive": "a green triangle moving down",
                                    "negative": ""}, (360, 200)),
        Node(5, "AliceRCMSampler", {"model": (2, 0), "conditioning": (4, 0), "seed": 42, **RCM}, (720, 0)),
        Node(6, "AliceVAELoader", VAE, (720, 380)),
        Node(7, "AliceVAEDecode", {"vae": (6, 0), "samples": (5, 0), **DECODE}, (1080, 0)),
        Node(8, "AliceSaveVideo", {"images": (7, 0), **SAVE, "filename_prefix": "video/alice_lora"}, (1440, 0)),
    ]


WORKFLOWS = {
    "alice_t2v_4step": t2v_4step,
    "alice_teacher_vs_student": teacher_vs_student,
    "alice_lora": lora,
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
