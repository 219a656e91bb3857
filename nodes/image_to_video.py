"""Image-to-video in a graph: the CLIP vision encoder of Wan2.1 I2V, and a start image (a native ComfyUI IMAGE) joined
to the encoded prompts, as ComfyUI's own WanImageToVideo joins `concat_latent_image` / `clip_vision_output` to its
CONDITIONING. The samplers fit the image to their width x height and encode it (Wan's y, CLIP tokens, or TI2V's
first frame) at their frame count, so the video size is set in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from alice_core.errors import AliceError
from alice_core.generation import dit_config
from alice_core.loading.clip_vision import load_clip_vision
from alice_core.models.clip_vision import ClipImageEncoder
from alice_core.models.interfaces import VideoAutoencoder
from alice_core.pipeline import Conditioning, GenerationSettings, VideoPipeline, start_image_condition
from alice_core.conditioning import ImageCondition

from . import host
from .base import AliceNode

START_IMAGE_NODE = "Alice Start Image"
CLIP_LOADER_NODE = "Alice CLIP Vision Loader"


@dataclass(frozen=True)
class StartImageConditioning(Conditioning):
    """Encoded prompts with a start image and the parts that encode it."""

    image: torch.Tensor                    # [3, H, W] in [-1, 1], as given (the sampler fits it to its size)
    vae: VideoAutoencoder
    clip_vision: ClipImageEncoder | None


class AliceCLIPVisionLoader(AliceNode):
    DISPLAY_NAME = CLIP_LOADER_NODE
    DESCRIPTION = ("Loads the CLIP ViT-H image encoder a Wan2.1 I2V model needs (ComfyUI's clip_vision_h.safetensors "
                   "from models/clip_vision). Wan2.2 I2V and TI2V-5B use none.")
    RETURN_TYPES = ("ALICE_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "clip_name": (host.model_files("clip_vision"), {"tooltip": "a CLIP vision file in models/clip_vision "
                                                                       "(clip_vision_h.safetensors for Wan2.1 I2V)"}),
        }}

    def execute(self, clip_name: str) -> tuple[ClipImageEncoder]:
        encoder = load_clip_vision(host.model_path("clip_vision", clip_name))
        encoder.model.to(host.compute_device())
        return (encoder,)


class AliceStartImage(AliceNode):
    DISPLAY_NAME = START_IMAGE_NODE
    DESCRIPTION = ("Image-to-video: the video starts from this picture. Joins the start image (e.g. from Load Image) "
                   "to the encoded prompts; connect its conditioning to an Alice sampler, which fits the image to its "
                   "width and height (scale to cover, centre crop).")
    RETURN_TYPES = ("ALICE_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "conditioning": ("ALICE_CONDITIONING", {"tooltip": "from Alice Prompt Encode"}),
            "vae": ("ALICE_VAE", {"tooltip": "from Alice VAE Loader: the VAE of the model you sample with"}),
            "start_image": ("IMAGE", {"tooltip": "the first frame of the video (of a batch, the first image)"}),
        }, "optional": {
            "clip_vision": ("ALICE_CLIP_VISION", {"tooltip": "Wan2.1 I2V only: from Alice CLIP Vision Loader"}),
        }}

    def execute(self, conditioning: Conditioning, vae: VideoAutoencoder, start_image: torch.Tensor,
                clip_vision: ClipImageEncoder | None = None) -> tuple[StartImageConditioning]:
        prompts = {f.name: getattr(conditioning, f.name) for f in dataclasses.fields(Conditioning)}
        image = start_image[0].permute(2, 0, 1).float() * 2 - 1  # IMAGE [B, H, W, 3] in 0..1 -> [3, H, W] in [-1, 1]
        return (StartImageConditioning(**prompts, image=image.cpu(), vae=vae, clip_vision=clip_vision),)


def sampler_image_condition(model: VideoPipeline, conditioning: Conditioning,
                            settings: GenerationSettings) -> tuple[GenerationSettings, ImageCondition | None]:
    """The sampler's settings (naming the start image when there is one) and what the image gives the DiT; errors
    name the input that fixes them."""
    sampler = settings.sampler or model.defaults.sampler_for(model.dits)
    use = model.start_image_use(sampler)
    given = conditioning if isinstance(conditioning, StartImageConditioning) else None
    if use == "needed" and given is None:
        raise AliceError(f"{model.name!r} is an image-to-video model: it needs a start image; connect the "
                         f"conditioning of {START_IMAGE_NODE} (with a start_image) to input 'conditioning'")
    if use == "none" and given is not None:
        raise AliceError(f"{model.name!r} is a text-to-video model and takes no start image; connect Alice Prompt "
                         f"Encode's conditioning to input 'conditioning' directly (without {START_IMAGE_NODE})")
    if given is None:
        return settings, None
    cfg = dit_config(model.dits[sampler])
    if cfg.image_dim is not None and given.clip_vision is None:
        raise AliceError(f"{model.name!r} is a Wan2.1 image-to-video model: it needs the CLIP vision encoder; connect "
                         f"{CLIP_LOADER_NODE} to {START_IMAGE_NODE}'s input 'clip_vision'")
    channels = model.latent_space.latent_channels
    if given.vae.latent_channels != channels:
        raise AliceError(f"the VAE connected to {START_IMAGE_NODE} makes {given.vae.latent_channels}-channel latents "
                         f"but {model.name!r} takes {channels}; connect the VAE of the model you sample with")
    settings = dataclasses.replace(settings, image="start_image")
    # sizes and frames checked before the image is encoded at them
    model.resolve(dataclasses.replace(settings, prompt=conditioning.prompt, negative_prompt=conditioning.negative_prompt))
    condition = start_image_condition(model.name, cfg, given.vae, given.clip_vision, given.image, settings.width,
                                      settings.height, settings.frames, model.device)
    return settings, condition
