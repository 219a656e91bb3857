"""Prompt encoding and the two samplers: rCM (the distilled 1-4 step student) and the teacher (flow matching + CFG)."""

from __future__ import annotations

from alice_core.models.interfaces import TextEncoder
from alice_core.pipeline import GenerationSettings
from alice_core.preview import previewer_for_space
from alice_core.sampling import RCM_MAX_STEPS
from alice_core.stages import AliceModel, Conditioning, encode_prompts, sample, to_comfy_latent

from . import host
from .base import AliceNode

MAX_SEED = 2**63 - 1  # the samplers seed a torch.Generator, which takes signed 64-bit seeds


def _size_inputs() -> dict:
    # Multiples of 16 suit every Alice/Wan model (VAE stride 8 x patch 2); the defaults are alice-tiny's.
    return {
        "width": ("INT", {"default": 32, "min": 16, "max": 4096, "step": 16}),
        "height": ("INT", {"default": 32, "min": 16, "max": 4096, "step": 16}),
        "frames": ("INT", {"default": 9, "min": 1, "max": 1001, "step": 4, "tooltip": "4k+1 frames"}),
    }


def _run_sampler(model: AliceModel, conditioning: Conditioning, settings: GenerationSettings) -> tuple[dict]:
    latents = sample(
        model, conditioning, settings,
        progress=host.step_progress(settings.steps, previewer_for_space(model.latent_space)),
        should_cancel=host.cancel_check(),
    )
    return (to_comfy_latent(latents, model.latent_space),)


class AliceTextEncode(AliceNode):
    DISPLAY_NAME = "Alice Prompt Encode"
    DESCRIPTION = "Encodes the prompt and the negative prompt (the negative is used by the teacher's CFG only)."
    RETURN_TYPES = ("ALICE_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "text_encoder": ("ALICE_TEXT_ENCODER",),
            "positive": ("STRING", {"multiline": True, "default": "a red ball bouncing"}),
            "negative": ("STRING", {"multiline": True, "default": ""}),
        }}

    def execute(self, text_encoder: TextEncoder, positive: str, negative: str) -> tuple[Conditioning]:
        return (encode_prompts(text_encoder, positive, negative),)


def _model_inputs() -> dict:
    """The inputs both samplers start with, in this order (workflow widget values depend on it)."""
    return {
        "model": ("ALICE_MODEL",),
        "conditioning": ("ALICE_CONDITIONING",),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
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
            "steps": ("INT", {"default": RCM_MAX_STEPS, "min": 1, "max": RCM_MAX_STEPS}),
            **_size_inputs(),
            "sigma_max": ("FLOAT", {"default": 80.0, "min": 1.0, "max": 1000.0, "step": 0.5,
                                    "tooltip": "starting noise level of the rCM schedule"}),
            "mode": (["sde", "ode"], {"default": "sde", "tooltip": "sde: fresh noise between steps; ode: deterministic"}),
        }}

    def execute(self, model: AliceModel, conditioning: Conditioning, seed: int, steps: int, width: int,
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
        return {"required": {
            **_model_inputs(),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "1.0 turns CFG off"}),
            "shift": ("FLOAT", {"default": 5.0, "min": 0.01, "max": 100.0, "step": 0.1, "tooltip": "flow shift"}),
            **_size_inputs(),
        }}

    def execute(self, model: AliceModel, conditioning: Conditioning, seed: int, steps: int, cfg: float,
                shift: float, width: int, height: int, frames: int) -> tuple[dict]:
        settings = GenerationSettings(prompt="", seed=seed, sampler="teacher", steps=steps, width=width,
                                      height=height, frames=frames, guidance=cfg, shift=shift)
        return _run_sampler(model, conditioning, settings)
