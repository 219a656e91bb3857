"""The Generate tab's image-to-video inputs: the start image upload, shown for models that take one, and the CLIP
vision encoder choice, shown for the models that need one (Wan2.1 I2V). Both lists come from the server."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from alice_core.pipeline import VideoPipeline

from .models import needs_clip_vision
from .studio import Studio

# What the model does with a start image (pipeline.start_image_use), as the model line says it.
START_IMAGE_NOTES = {"needed": "image to video (upload a start image)", "optional": "text or image to video (start "
                     "image optional)", "none": "text to video"}
START_IMAGE_LABELS = {"needed": "Start image (this model needs one)", "optional": "Start image (optional)"}
CLIP_VISION_INFO = ("Wan2.1 image-to-video reads the picture through CLIP ViT-H: clip_vision_h.safetensors in the "
                    "clip_vision folder (alice download clip-vision-h-comfy)")


def _clip_vision_value(studio: Studio, label: str, names: list[str]) -> str | None:
    """The model's own CLIP file (a catalogue model names one) when it is on the list, else the first file."""
    own = studio.choice(label).clip_vision
    return own if own in names else next(iter(names), None)


def start_image_update(pipe: VideoPipeline) -> dict:
    """Shown only for a model that takes a start image; a text-to-video model's stays hidden and empty."""
    use = pipe.start_image_use()
    if use == "none":
        return gr.update(visible=False, value=None)
    return gr.update(visible=True, label=START_IMAGE_LABELS[use])


def clip_vision_update(studio: Studio, pipe: VideoPipeline, label: str) -> dict:
    """Shown only for a model that needs the CLIP vision encoder, listing the files the app may load."""
    if not needs_clip_vision(pipe):
        return gr.update(visible=False)
    names = studio.clip_vision_names()
    return gr.update(visible=True, choices=names, value=_clip_vision_value(studio, label, names))


def build_image_inputs(studio: Studio, pipe: VideoPipeline, label: str, ui: SimpleNamespace) -> None:
    """ui.start_image and ui.clip_vision, as the model `pipe` (of label `label`) takes them."""
    use = pipe.start_image_use()
    ui.start_image = gr.Image(label=START_IMAGE_LABELS.get(use, "Start image"), type="numpy", image_mode="RGB",
                              sources=["upload", "clipboard"], height=200, visible=use != "none",
                              elem_id="start-image")
    names = studio.clip_vision_names()
    ui.clip_vision = gr.Dropdown(names, value=_clip_vision_value(studio, label, names), label="CLIP vision",
                                 info=CLIP_VISION_INFO, visible=needs_clip_vision(pipe), elem_id="clip-vision")
