"""Loader nodes: the DiT model, the text encoder, the autoencoder (VAE) and LoRAs, from ComfyUI's model folders."""

from __future__ import annotations

import os
from pathlib import Path

from alice_core.bundle import bundled_loras, bundled_models
from alice_core.errors import AliceError
from alice_core.hub import load_catalogue, resolve_catalogue_model
from alice_core.loading.experts import NODE_PAIR_FIX, check_pair_files
from alice_core.loading.precision import HOST_PRECISION_NAMES, resolve_precision
from alice_core.loading.text_encoders import load_text_encoder
from alice_core.models.attention import ATTENTION_BACKENDS, DEFAULT_ATTENTION
from alice_core.models.runtime import DiTRuntime
from alice_core.models.vae import WanVAE
from alice_core.pipeline import VideoPipeline, load_pipeline, load_vae
from alice_core.preview import remember_wan_vae
from alice_core.train.finetune_job import finetune_lora_files, without_teacher_halves

from . import host
from .base import AliceNode

CATALOGUE_PREFIX = "catalogue/"
NO_LOW_NOISE_MODEL = "none"
BUNDLE_FILE = "model.json"  # a folder holding this is an Alice model bundle
HF_CONFIG_FILE = "config.json"  # a folder holding this is a transformers model (umT5)


def _grouped_files(folder: str, marker: str) -> list[str]:
    """Files of a model folder, each folder holding `marker` shown once as '<folder>/<marker>' instead."""
    entries: list[str] = []
    for name in host.model_files(folder):
        full = host.model_path(folder, name)
        entry = os.path.join(os.path.dirname(name), marker) if (full.parent / marker).is_file() else name
        if entry not in entries:
            entries.append(entry)
    return entries


def _catalogue_entries() -> list[str]:
    """Catalogue models Alice's own loaders can run (not the ones packaged for ComfyUI's native loaders)."""
    models = load_catalogue().models.values()
    return [CATALOGUE_PREFIX + m.name for m in models if not m.comfyui_only]


def bundle_entries() -> list[str]:
    return [e for e in _grouped_files("diffusion_models", BUNDLE_FILE) if os.path.basename(e) == BUNDLE_FILE]


class AliceModelLoader(AliceNode):
    DISPLAY_NAME = "Alice Model Loader"
    DESCRIPTION = (
        "Loads an Alice/Wan DiT: the bundled alice-tiny, a model bundle (folder with model.json), a single Wan "
        "checkpoint from models/diffusion_models (text- or image-to-video, TI2V-5B with the Wan2.2 VAE), a Wan2.2 "
        "A14B pair (the high-noise file here, the low-noise file in low_noise_model_name), or a catalogue model "
        "(with its own LoRA, if it has one). A catalogue model missing on disk is downloaded (with its VAE and text "
        "encoder, into the standard folders) only when download is on."
    )
    RETURN_TYPES = ("ALICE_MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        choices = [*bundled_models(), *_grouped_files("diffusion_models", BUNDLE_FILE), *_catalogue_entries()]
        return {"required": {
            "model_name": (choices, {"tooltip": "bundled model, file in models/diffusion_models, or catalogue entry"}),
            "precision": (list(HOST_PRECISION_NAMES), {"default": "auto", "tooltip": "auto: fp32 on CPU, bf16 on GPU. "
                          "fp8 saves memory; on a CPU it runs 2-3x slower than bf16 (weights upcast every call)"}),
            "offload": ("BOOLEAN", {"default": False, "tooltip": "keep weights in CPU memory, on the GPU only while sampling"}),
            "download": ("BOOLEAN", {"default": False, "tooltip": "allow downloading a catalogue model that is not on disk"}),
        }, "optional": {
            "attention": (list(ATTENTION_BACKENDS), {"default": DEFAULT_ATTENTION, "tooltip":
                          "flash / sage need flash-attn / sageattention and a GPU; when missing, sdpa is used"}),
            "blocks_on_gpu": ("INT", {"default": 0, "min": 0, "max": 100, "tooltip":
                              "block swap: keep this many DiT blocks on the GPU, stream the rest from CPU memory "
                              "(0: all blocks on the GPU)"}),
            "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile each DiT block (slow first run)"}),
            "low_noise_model_name": ([NO_LOW_NOISE_MODEL, *host.model_files("diffusion_models")], {
                "default": NO_LOW_NOISE_MODEL, "tooltip": "Wan2.2 A14B: the low-noise expert's file (model_name is "
                                                          "then the high-noise expert's); none for one DiT"}),
            "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.999, "step": 0.005, "tooltip":
                         "Wan2.2 A14B: the time (Wan's 0..1) below which the low-noise expert takes over; 0: the "
                         "model's own (Wan: 0.875 text-to-video, 0.9 image-to-video)"}),
        }}

    def execute(self, model_name: str, precision: str, offload: bool, download: bool, attention: str = DEFAULT_ATTENTION,
                blocks_on_gpu: int = 0, compile: bool = False, low_noise_model_name: str = NO_LOW_NOISE_MODEL,
                boundary: float = 0.0) -> tuple[VideoPipeline]:
        low = None if low_noise_model_name == NO_LOW_NOISE_MODEL else host.model_path("diffusion_models",
                                                                                    low_noise_model_name)
        defaults = catalogue_lora = None
        if model_name.startswith(CATALOGUE_PREFIX):
            name = model_name.removeprefix(CATALOGUE_PREFIX)
            files = resolve_catalogue_model(name, download, host.download_progress(), host.model_folders())
            source, defaults, catalogue_lora = files["dit"], load_catalogue().models[name].defaults, files.get("lora")
            if "dit_low" in files:
                if low is not None:
                    raise AliceError(f"{model_name} is a pair and brings its own low-noise expert; set input "
                                     f"'low_noise_model_name' to {NO_LOW_NOISE_MODEL}")
                low = files["dit_low"]
        elif model_name in bundled_models() or os.path.basename(model_name) == BUNDLE_FILE:
            if low is not None:
                raise AliceError(f"{model_name} is a model bundle; input 'low_noise_model_name' is for a single Wan2.2 "
                                 f"high-noise file: set it to {NO_LOW_NOISE_MODEL}")
            source = model_name if model_name in bundled_models() else host.model_path("diffusion_models", model_name)
        else:
            source = host.model_path("diffusion_models", model_name)
        if boundary and low is None:
            raise AliceError("input 'boundary' is for two-expert (Wan2.2 A14B) models: set it to 0, or choose the "
                             "low-noise expert in 'low_noise_model_name'")
        if low is not None:  # from the two headers, before either expert is read
            check_pair_files(source, low, NODE_PAIR_FIX)
        device = host.compute_device()
        offload_device = host.offload_device() if offload else None
        runtime = DiTRuntime(attention, blocks_on_gpu or None, compile)
        pipe = load_pipeline(source, precision, device=device, low_noise_model=low, boundary=boundary or None,
                             offload_device=offload_device, parts=("dits",), defaults=defaults, runtime=runtime)
        if catalogue_lora is not None:  # the catalogue model's own LoRA (lightx2v's 4 steps) on its base model
            pipe = pipe.with_lora(catalogue_lora, copy=False)
        return (pipe,)


class AliceTextEncoderLoader(AliceNode):
    DISPLAY_NAME = "Alice Text Encoder Loader"
    DESCRIPTION = "Loads the bundled MiniLM (alice-tiny) or a umT5 encoder (Wan) from models/text_encoders."
    RETURN_TYPES = ("ALICE_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        choices = ["minilm", *_grouped_files("text_encoders", HF_CONFIG_FILE)]
        return {"required": {
            "text_encoder": (choices, {"tooltip": "minilm for alice-tiny; umT5 folder or Wan .pth for Wan models"}),
            "precision": (list(HOST_PRECISION_NAMES), {"default": "auto", "tooltip": "minilm always runs in fp32. fp8 saves "
                          "umT5's memory; on a CPU it runs 2-3x slower than bf16 (weights upcast every call)"}),
            "device": (["default", "cpu"], {"default": "default", "tooltip": "cpu keeps GPU memory for the DiT"}),
        }}

    def execute(self, text_encoder: str, precision: str, device: str):
        torch_device = host.compute_device() if device == "default" else host.offload_device()
        precision = resolve_precision(precision, torch_device)
        if text_encoder == "minilm":
            return (load_text_encoder("minilm", device=torch_device),)
        path: Path = host.model_path("text_encoders", text_encoder)
        source = path.parent if path.name == HF_CONFIG_FILE else path
        return (load_text_encoder(source, device=torch_device, precision=precision),)


class AliceVAELoader(AliceNode):
    DISPLAY_NAME = "Alice VAE Loader"
    DESCRIPTION = ("Loads a model bundle's autoencoder (alice-tiny's lossless latent) or a Wan VAE from models/vae: "
                   "Wan2.1's for Wan2.1 and the Wan2.2 A14B models, Wan2.2's (z_dim 48) for TI2V-5B.")
    RETURN_TYPES = ("ALICE_VAE",)
    RETURN_NAMES = ("vae",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        choices = [*bundled_models(), *bundle_entries(), *host.model_files("vae")]
        return {"required": {
            "vae_name": (choices, {"tooltip": "use the entry of the model you sample with"}),
            "precision": (list(HOST_PRECISION_NAMES), {"default": "auto", "tooltip": "auto: fp32 on CPU, bf16 on GPU. "
                          "fp8 and nf4 run the VAE in bf16 (it is not quantised)"}),
        }}

    def execute(self, vae_name: str, precision: str):
        device = host.compute_device()
        precision = resolve_precision(precision, device)
        if vae_name in bundled_models():
            source = vae_name
        elif os.path.basename(vae_name) == BUNDLE_FILE:
            source = host.model_path("diffusion_models", vae_name)
        else:
            source = host.model_path("vae", vae_name)
        vae = load_vae(source, precision, device)
        if isinstance(vae, WanVAE):
            remember_wan_vae(vae)  # the sampler nodes preview Wan latents with factors fitted on it
        return (vae,)


class AliceLoraLoader(AliceNode):
    DISPLAY_NAME = "Alice LoRA Loader"
    DESCRIPTION = ("Applies a LoRA from models/loras to the model; chain several loaders to stack LoRAs. A finetune's "
                   "LoRA X is listed once: X goes on the 4-step student and X.teacher (beside it) on the teacher.")
    RETURN_TYPES = ("ALICE_MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        files = host.model_files("loras")
        shipped = [name for name in bundled_loras() if name not in files]  # a file in models/loras wins
        return {
            "required": {
                "model": ("ALICE_MODEL", {"tooltip": "the model to add the LoRA to (it stays unchanged itself)"}),
                "lora_name": (without_teacher_halves([*files, *shipped]), {
                    "tooltip": "a LoRA file in models/loras, or an example LoRA shipped with a bundled model; a "
                               "finetune's <name>.teacher file is applied with <name>, to the teacher"}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "how much of the LoRA to add: 1 as trained, 0 none, negative "
                                                  "subtracts"}),
            },
            "optional": {
                "trained_lora": ("STRING", {"forceInput": True, "tooltip": "connect Alice Finetune's lora_name to "
                                                                          "use the LoRA it trains (instead of "
                                                                          "lora_name)"}),
            },
        }

    def execute(self, model: VideoPipeline, lora_name: str, strength: float, trained_lora: str | None = None):
        if trained_lora:
            lora_name = trained_lora  # a name in models/loras, as the finetune node returns it
        shipped = bundled_loras()
        if lora_name in shipped and lora_name not in host.model_files("loras"):
            path = Path(shipped[lora_name])
        else:
            path = host.model_path("loras", lora_name)
        files = finetune_lora_files(path, list(model.dits))  # a finetune's LoRA: its teacher LoRA too
        teacher = files.get("teacher")
        if teacher is not None and files.get("rcm") != teacher and teacher.name in {n for n, _ in model.loras}:
            # a graph from before the pair was listed as one entry: a second loader applying the teacher's half
            raise AliceError(f"{teacher.name} is already on the model, and a finetune's LoRA applies it together "
                             f"with its student LoRA; remove the LoRA loader that applies {teacher.name} alone")
        for file in dict.fromkeys(files.values()):
            model = model.with_lora(file, strength)
        return (model,)
