"""Latents to frames (a standard IMAGE batch) and frames to a video file in ComfyUI's output folder."""

from __future__ import annotations

import json
import re

import torch

from alice_core.models.interfaces import VideoAutoencoder
from alice_core.models.latent_space import latent_space_of
from alice_core.pipeline import decode_latents
from alice_core.video_io import write_video

from . import host
from .base import AliceNode
from .latents import from_comfy_latent, to_comfy_image
from .sampling import default_model_settings

VIDEO_FORMATS = ["mp4", "webm", "gif"]


class AliceVAEDecode(AliceNode):
    DISPLAY_NAME = "Alice VAE Decode"
    DESCRIPTION = "Decodes a video LATENT to an IMAGE batch [frames, height, width, 3] for any image/video node."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "vae": ("ALICE_VAE", {"tooltip": "from Alice VAE Loader: the entry of the model that made the latent"}),
            "samples": ("LATENT", {"tooltip": "a video latent from an Alice sampler (or any Wan2.1 latent)"}),
            "tiled": ("BOOLEAN", {"default": False, "tooltip": "Wan VAE: decode in tiles to save memory"}),
            "tile_size": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 32, "tooltip": "pixels"}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 16, "tooltip": "pixels"}),
        }}

    def execute(self, vae: VideoAutoencoder, samples: dict, tiled: bool, tile_size: int, overlap: int):
        latents = from_comfy_latent(samples, latent_space_of(vae))
        return (to_comfy_image(decode_latents(vae, latents, tiled, tile_size, overlap)),)


class AliceSaveVideo(AliceNode):
    DISPLAY_NAME = "Alice Save Video"
    DESCRIPTION = "Saves frames as mp4 (H.264), webm (VP9) or gif in the output folder, with the workflow embedded."
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "the frames, e.g. from Alice VAE Decode"}),
                "fps": ("INT", {"default": default_model_settings().get("fps", 16), "min": 1, "max": 120,
                                "tooltip": "frames per second of the file (the default is the bundled model's)"}),
                "format": (VIDEO_FORMATS, {"default": "mp4", "tooltip": "mp4 (H.264) or webm (VP9): dropped on "
                                                                        "ComfyUI they restore the workflow; gif: "
                                                                        "ComfyUI reads no GIF comments, so a "
                                                                        "dropped GIF does not"}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 63, "tooltip": "quality, lower is better (mp4: 0-51)"}),
                "filename_prefix": ("STRING", {"default": "video/alice", "tooltip": "file name in ComfyUI's output "
                                                                                   "folder; a/b makes subfolder a"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def execute(self, images: torch.Tensor, fps: int, format: str, crf: int, filename_prefix: str,
                prompt: dict | None = None, extra_pnginfo: dict | None = None) -> dict:
        path, subfolder = host.output_location(filename_prefix, f".{format}")
        write_video(images, path, fps=fps, metadata=self._metadata(prompt, extra_pnginfo), crf=crf)
        return {
            "ui": {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}], "animated": (True,)},
            "result": (str(path),),
        }

    @staticmethod
    def _metadata(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, str]:
        """The graph ('prompt') and the UI workflow as JSON tags, as ComfyUI's SaveVideo stores them, so dropping
        the video on ComfyUI restores the workflow."""
        if not host.metadata_enabled():
            return {}
        metadata = {"prompt": json.dumps(prompt)} if prompt is not None else {}
        for key, value in (extra_pnginfo or {}).items():
            if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):  # usable as a container tag; ComfyUI sends 'workflow'
                metadata[key] = json.dumps(value)
        return metadata
