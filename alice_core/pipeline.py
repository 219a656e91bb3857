"""The one front door: `load_pipeline` builds a `VideoPipeline` (prompt -> text embeddings -> latents -> frames ->
file, in one call or in stages; see `video_pipeline.py`) from a bundled model, a bundle folder, a Wan checkpoint or
a Wan2.2 expert pair; `load_vae` loads an autoencoder alone. Every name a host needs is importable from here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .bundle import ModelDefaults, resolve_bundle
from .conditioning import check_image_encoder, start_image_condition, start_image_use
from .errors import AliceError
from .generation import (
    Conditioning, GeneratedVideo, GenerationSettings, decode_latents, dit_config, encode_prompts, frames_from_video,
)
from .models.dit import WanDiT
from .models.interfaces import VideoAutoencoder
from .models.latent_space import latent_space_for, latent_space_of, wan_latent_space
from .models.runtime import DiTRuntime, prepare_dit
from .sampling import Experts
from .video_pipeline import VideoPipeline

__all__ = ["Conditioning", "GeneratedVideo", "GenerationSettings", "VideoPipeline", "check_image_encoder",
           "decode_latents", "encode_prompts", "frames_from_video", "load_pipeline", "load_vae",
           "start_image_condition", "start_image_use"]

PARTS = ("dits", "text_encoder", "autoencoder")


def load_pipeline(
    model: str | Path | None = None,
    precision: str = "fp32",
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    low_noise_model: str | Path | None = None,
    boundary: float | None = None,
    offload_device: str | torch.device | None = None,
    parts: tuple[str, ...] = PARTS,
    defaults: ModelDefaults | dict | None = None,
    runtime: DiTRuntime = DiTRuntime(),
    clip_vision: str | None = None,
    samplers: tuple[str, ...] | None = None,
) -> VideoPipeline:
    """A pipeline for a bundled model name, a bundle folder (or its model.json), a single Wan DiT checkpoint
    (+ `vae` and `text_encoder`, which also override a bundle's), or a Wan2.2 expert pair: an official / diffusers
    pipeline folder, or `model` (high noise) + `low_noise_model`. `parts` leaves out what a host loads on its own
    (a node graph loads only the DiTs here). precision: a name of loading/precision.py, "auto" included.
    `defaults` are a single checkpoint's preset (a catalogue model's steps, sigma_max, boundary, size, ...).
    runtime: the DiT's attention kernel, block swap and compile (single DiTs; an expert pair keeps its own swap).
    clip_vision: the CLIP image encoder a Wan2.1 I2V model needs. samplers: the ones of a bundle whose DiTs are
    loaded (default all; a command running one sampler reads one network)."""
    from .loading.precision import compute_dtype, resolve_precision
    from .loading.text_encoders import load_text_encoder
    from .loading.vae import load_autoencoder, load_wan_vae

    device = torch.device(device)
    precision = resolve_precision(precision, device)
    dtype = compute_dtype(precision)
    bundle = resolve_bundle(model) if low_noise_model is None else None
    if bundle is not None:
        name, defaults, space = bundle.name, bundle.defaults, latent_space_for(bundle.autoencoder)
        files = {s: file for s, file in bundle.dits.items() if samplers is None or s in samplers}
        dits = _load_bundle_dits(files, precision, device, offload_device, runtime)
        encoder_source = text_encoder or bundle.text_encoder_source
    else:
        from .loading.experts import default_teacher_settings, find_expert_pair
        from .loading.formats import inspect_checkpoint

        # A single file's header says whether it is a DiT checkpoint (and which) before anything else is asked for.
        if low_noise_model is None and find_expert_pair(model) is None:
            inspect_checkpoint(model)
        missing = [flag for flag, value, part in (("--vae PATH (Wan VAE)", vae, "autoencoder"),
                                                   ("--text-encoder PATH (umT5 folder)", text_encoder, "text_encoder"))
                   if value is None and part in parts]
        if missing:
            raise AliceError(f"{model} is a single DiT checkpoint: also pass {' and '.join(missing)}")
        dit = _load_single_or_pair(model, low_noise_model, boundary, precision, device, offload_device, runtime)
        # One network (or pair) serves whichever sampler the user picks.
        if not isinstance(defaults, ModelDefaults):
            # a Wan2.2 pair gets Wan's teacher guidance and shift for its task unless its preset says otherwise
            wan = default_teacher_settings(dit_config(dit)) if isinstance(dit, Experts) else {}
            defaults = ModelDefaults.from_dict({**wan, **(defaults or {})}, f"{model}: defaults")
        # without the VAE loaded, the DiT's channels say which Wan VAE's latents it makes (48: TI2V-5B's Wan2.2 VAE)
        name, dits, space = Path(model).stem, {"rcm": dit, "teacher": dit}, wan_latent_space(dit_config(dit).out_dim)
        encoder_source = text_encoder

    autoencoder = None
    if "autoencoder" in parts:
        autoencoder = load_wan_vae(vae, dtype=dtype) if vae else load_autoencoder(bundle.autoencoder, bundle.folder, dtype)
        space = latent_space_of(autoencoder)
    else:  # without the VAE nothing else checks this before sampling
        for dit in {id(d): d for d in dits.values()}.values():
            if dit_config(dit).out_dim != space.latent_channels:
                raise AliceError(f"{name}: the DiT takes {dit_config(dit).out_dim} latent channels but the {space.name} "
                                 f"has {space.latent_channels}; use a model made for that latent space")
    encoder = load_text_encoder(encoder_source, precision=precision) if "text_encoder" in parts else None
    pipe = VideoPipeline(name, dits, space, encoder, autoencoder, defaults, device, offload_device)
    if clip_vision is not None:
        from .loading.clip_vision import load_clip_vision

        pipe.image_encoder = load_clip_vision(clip_vision)
    return pipe


def _load_dit(path, precision: str, device, offload_device, runtime: DiTRuntime) -> WanDiT:
    from .loading.dit import load_dit

    # A swapped model is read into CPU memory, then K blocks go to the device; otherwise it is read where it waits
    # between runs.
    swapped = runtime.blocks_on_device is not None
    dit = load_dit(path, precision=precision, device="cpu" if swapped else offload_device or device)
    return prepare_dit(dit, device if swapped else offload_device or device, runtime)


def _load_bundle_dits(files: dict[str, Path], precision: str, device, offload_device, runtime) -> dict[str, WanDiT]:
    by_file = {file: _load_dit(file, precision, device, offload_device, runtime)
               for file in dict.fromkeys(files.values())}  # a file is loaded once even when samplers share it
    return {sampler: by_file[file] for sampler, file in files.items()}


def _load_single_or_pair(model, low_noise_model, boundary, precision: str, device, offload_device,
                         runtime) -> WanDiT | Experts[WanDiT]:
    from .loading.experts import find_expert_pair, load_expert_pair

    pair = find_expert_pair(model) if low_noise_model is None else None
    if low_noise_model is not None or pair is not None:
        high, low = (model, low_noise_model) if pair is None else (pair.high, pair.low)
        folder_boundary = pair.boundary if pair is not None else None
        # two 14B experts: both wait in CPU memory, the one in use moves to the device (ExpertSwap)
        return load_expert_pair(high, low, precision, boundary if boundary is not None else folder_boundary, "cpu")
    if boundary is not None:
        raise AliceError("--boundary is for two-expert (Wan2.2 A14B) models: also pass --low-noise-model LOW")
    return _load_dit(model, precision, device, offload_device, runtime)


def load_vae(source: str | Path, precision: str = "fp32", device: str | torch.device = "cpu") -> VideoAutoencoder:
    """A bundled model's autoencoder (by name, bundle folder or its model.json) or a Wan2.1 VAE file."""
    from .loading.precision import compute_dtype, resolve_precision
    from .loading.vae import load_autoencoder, load_wan_vae

    dtype = compute_dtype(resolve_precision(precision, device))
    bundle = resolve_bundle(source)
    autoencoder = load_autoencoder(bundle.autoencoder, bundle.folder, dtype) if bundle else load_wan_vae(source, dtype)
    return autoencoder.to(device) if isinstance(autoencoder, torch.nn.Module) else autoencoder
