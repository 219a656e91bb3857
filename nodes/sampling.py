"""Prompt encoding and the two samplers: rCM (the distilled 1-4 step student) and the teacher (flow matching + CFG)."""

from __future__ import annotations

import functools

from alice_core.bundle import DEFAULT_MODEL, resolve_bundle
from alice_core.errors import AliceError
from alice_core.limits import NODE_WORDS
from alice_core.loading.formats import inspect_checkpoint
from alice_core.models.interfaces import TextEncoder
from alice_core.pipeline import Conditioning, GenerationSettings, VideoPipeline, encode_prompts
from alice_core.preview import previewer_for_space
from alice_core.sampling import RCM_MAX_STEPS, Experts

from . import host
from .base import AliceNode
from .image_to_video import sampler_image_condition
from .latents import to_comfy_latent

MAX_SEED = 2**63 - 1  # the samplers seed a torch.Generator, which takes signed 64-bit seeds


@functools.cache
def default_model_settings() -> dict:
    """The bundled default model's own numbers (model.json defaults, its size multiple = latent stride x patch, its
    frame step = temporal stride): the widgets' defaults and steps come from the model, not from constants here."""
    bundle = resolve_bundle(DEFAULT_MODEL)
    patch = inspect_checkpoint(next(iter(bundle.dits.values()))).config.patch_size[1]
    stride = bundle.autoencoder.get("spatial_stride", 8)  # a Wan VAE's is 8
    return {**bundle.defaults.to_dict(), "size_multiple": stride * patch,
            "frame_step": bundle.autoencoder.get("temporal_stride", 4)}


def _size_inputs() -> dict:
    d = default_model_settings()
    multiple, step = d["size_multiple"], d["frame_step"]
    size = {"min": multiple, "max": 4096, "step": multiple}
    note = (f"a multiple of the model's latent stride x patch ({multiple} for {DEFAULT_MODEL}, 16 for Wan); "
            f"{DEFAULT_MODEL} was trained at {d['width']}x{d['height']}")
    return {
        "width": ("INT", {"default": d["width"], **size, "tooltip": f"video width in pixels: {note}"}),
        "height": ("INT", {"default": d["height"], **size, "tooltip": f"video height in pixels: {note}"}),
        "frames": ("INT", {"default": d["frames"], "min": 1, "max": 1001, "step": step,
                           "tooltip": f"{step}k+1 frames (the model's temporal stride is {step})"}),
    }


def _run_sampler(model: VideoPipeline, conditioning: Conditioning, settings: GenerationSettings) -> tuple[dict]:
    settings, condition = sampler_image_condition(model, conditioning, settings)
    previewer = previewer_for_space(model.latent_space)
    latents = model.sample(settings, conditioning, progress=host.step_progress(settings.steps, previewer),
                           should_cancel=host.cancel_check(), condition=condition, memory_words=NODE_WORDS)
    return (to_comfy_latent(latents, model.latent_space),)


class AliceTextEncode(AliceNode):
    DISPLAY_NAME = "Alice Prompt Encode"
    DESCRIPTION = "Encodes the prompt and the negative prompt (the negative is used by the teacher's CFG only)."
    RETURN_TYPES = ("ALICE_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "text_encoder": ("ALICE_TEXT_ENCODER", {"tooltip": "from Alice Text Encoder Loader"}),
            "positive": ("STRING", {"multiline": True, "default": "a red ball moving to the right",
                                    "tooltip": "what the video shows"}),
            "negative": ("STRING", {"multiline": True, "default": default_model_settings().get("negative_prompt", ""),
                                    "tooltip": "what to steer away from (teacher sampler with cfg > 1 only)"}),
        }}

    def execute(self, text_encoder: TextEncoder, positive: str, negative: str) -> tuple[Conditioning]:
        return (encode_prompts(text_encoder, positive, negative),)


def _model_inputs() -> dict:
    """The inputs both samplers start with, in this order (workflow widget values depend on it)."""
    return {
        "model": ("ALICE_MODEL", {"tooltip": "from Alice Model Loader (or Alice LoRA Loader)"}),
        "conditioning": ("ALICE_CONDITIONING", {"tooltip": "from Alice Prompt Encode, or from Alice Start Image for "
                                                           "an image-to-video model"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "the starting noise: the same seed and settings make the same video"}),
    }


class AliceRCMSampler(AliceNode):
    DISPLAY_NAME = "Alice rCM Sampler (1-4 steps)"
    DESCRIPTION = "Few-step sampling with the rCM-distilled student; no CFG, so the negative prompt is not used."
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            **_model_inputs(),
            "steps": ("INT", {"default": default_model_settings().get("rcm_steps", RCM_MAX_STEPS), "min": 1,
                              "max": RCM_MAX_STEPS, "tooltip": "student steps: 4 is the distilled quality, 1 the "
                                                               "fastest"}),
            **_size_inputs(),
            "sigma_max": ("FLOAT", {"default": default_model_settings().get("sigma_max", 80.0), "min": 1.0,
                                    "max": 1000.0, "step": 0.5, "tooltip": "starting noise level of the rCM schedule"}),
            "mode": (["sde", "ode"], {"default": "sde", "tooltip": "sde: fresh noise between steps; ode: deterministic"}),
        }}

    def execute(self, model: VideoPipeline, conditioning: Conditioning, seed: int, steps: int, width: int,
                height: int, frames: int, sigma_max: float, mode: str) -> tuple[dict]:
        settings = GenerationSettings(prompt="", seed=seed, sampler="rcm", steps=steps, width=width, height=height,
                                      frames=frames, sigma_max=sigma_max, ode=mode == "ode")
        return _run_sampler(model, conditioning, settings)


class AliceTeacherSampler(AliceNode):
    DISPLAY_NAME = "Alice Teacher Sampler"
    DESCRIPTION = "Many-step flow-matching sampling with classifier-free guidance, with the teacher weights."
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        d = default_model_settings()
        return {"required": {
            **_model_inputs(),
            "steps": ("INT", {"default": d.get("teacher_steps", 50), "min": 1, "max": 1000,
                              "tooltip": "flow-matching steps: more is slower and closer to the teacher's best"}),
            "cfg": ("FLOAT", {"default": d.get("guidance", 5.0), "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "classifier-free guidance scale; 1.0 turns CFG off (and the negative "
                                         "prompt with it)"}),
            "shift": ("FLOAT", {"default": d.get("shift", 5.0), "min": 0.01, "max": 100.0, "step": 0.1,
                                "tooltip": "flow time shift: higher spends more steps at high noise"}),
            **_size_inputs(),
        }, "optional": {
            "guidance_low_noise": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 30.0, "step": 0.1, "tooltip":
                                   "Wan2.2 A14B: the low-noise expert's CFG (cfg is then the high-noise one's; "
                                   "Wan2.2 T2V: cfg 4, this 3); -1: the same as cfg"}),
        }}

    def execute(self, model: VideoPipeline, conditioning: Conditioning, seed: int, steps: int, cfg: float,
                shift: float, width: int, height: int, frames: int, guidance_low_noise: float = -1.0) -> tuple[dict]:
        low = None if guidance_low_noise < 0 else guidance_low_noise
        if low is not None and not isinstance(model.dits.get("teacher"), Experts):
            raise AliceError("input 'guidance_low_noise' is for two-expert (Wan2.2 A14B) models; this model has one "
                             "DiT: set it to -1")
        if low is not None and low < 1.0:
            raise AliceError(f"input 'guidance_low_noise' must be -1 (same as cfg) or 1.0..30.0, got {low:g}")
        settings = GenerationSettings(prompt="", seed=seed, sampler="teacher", steps=steps, width=width,
                                      height=height, frames=frames, guidance=cfg, shift=shift, guidance_low=low)
        return _run_sampler(model, conditioning, settings)
