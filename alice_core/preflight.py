"""Everything `load_pipeline` + generation would refuse that needs no weights, checked from file headers and
model.json before anything is loaded: a bad setting or a generation too large for the device costs no load time."""

from __future__ import annotations

from pathlib import Path

import torch

from .bundle import ModelDefaults, resolve_bundle
from .errors import AliceError
from .generation import GenerationSettings
from .limits import GenerationShape, check_generation_memory, parse_device
from .models.dit import WanDiT
from .models.latent_space import LatentSpace, latent_space_for, wan_latent_space


def preflight(
    settings: GenerationSettings,
    model: str | None = None,
    precision: str = "fp32",
    vae: str | None = None,
    text_encoder: str | None = None,
    device: str = "cpu",
    low_noise_model: str | None = None,
    defaults: dict | None = None,
    clip_vision: str | None = None,
) -> GenerationSettings:
    """The settings against the model's architecture and latent space (read from headers and model.json), and the
    memory the generation needs against what the device has free (`defaults`: a catalogue model's preset, as for
    `load_pipeline`). Returns the resolved settings. An expert pair is checked as far as headers tell (the two
    experts alike, the start image, the VAE's latent channels); its memory is checked once loaded."""
    from .loading.experts import find_expert_pair
    from .loading.formats import inspect_checkpoint
    from .loading.precision import check_precision
    from .pipeline import VideoPipeline, check_image_encoder

    check_precision(precision)
    dev = parse_device(device)
    bundle = resolve_bundle(model) if low_noise_model is None else None
    if bundle is None and (low_noise_model is not None or find_expert_pair(model) is not None):
        return _preflight_pair(settings, model, low_noise_model, vae, defaults)
    if bundle is not None:
        files, model_defaults, name = dict(bundle.dits), bundle.defaults, bundle.name
        others = [text_encoder or bundle.text_encoder_source, vae or _bundle_vae_file(bundle)]
    else:
        if settings.boundary is not None:  # as load_pipeline says it, before any weight is read
            raise AliceError("--boundary is for two-expert (Wan2.2 A14B) models: also pass --low-noise-model LOW")
        files, name = {"rcm": Path(model), "teacher": Path(model)}, Path(model).stem
        model_defaults = ModelDefaults.from_dict(defaults or {}, f"{model}: defaults")
        others = [text_encoder, vae]
    configs = {sampler: inspect_checkpoint(file).config for sampler, file in files.items()}
    if bundle is not None and not vae:
        space = latent_space_for(bundle.autoencoder)
    else:
        space = _vae_space(vae, next(iter(configs.values())).out_dim)
    with torch.device("meta"):  # one network per architecture: the samplers of a bundle often share it
        built = {config: WanDiT(config) for config in set(configs.values())}
    dits = {sampler: built[config] for sampler, config in configs.items()}
    resolved = VideoPipeline(name, dits, space, defaults=model_defaults, device=dev).resolve(settings)
    image_dim = configs[resolved.sampler].image_dim
    if image_dim is not None and clip_vision is None:
        check_image_encoder(name, image_dim, None)
    shape = GenerationShape(
        dit=configs[resolved.sampler], dit_count=len(set(files.values())), other_weight_bytes=sum(map(_disk_bytes, others)),
        temporal_stride=space.temporal_stride, spatial_stride=space.spatial_stride, wan_vae=space.name.startswith("Wan"),
    )
    check_generation_memory(shape, precision, resolved.width, resolved.height, resolved.frames, dev)
    return resolved


def _preflight_pair(settings: GenerationSettings, model: str, low_noise_model: str | None, vae: str | None,
                    defaults: dict | None) -> GenerationSettings:
    """A Wan2.2 pair from its headers: both experts of one architecture, the boundary, the start image the pair
    takes (or refuses) and the VAE's latent channels, each refused before either expert is read."""
    from .loading.experts import (
        CLI_PAIR_FIX, PAIR_FIX, check_pair_files, default_boundary, default_teacher_settings, find_expert_pair,
    )
    from .sampling import Experts
    from .video_pipeline import VideoPipeline

    found = find_expert_pair(model) if low_noise_model is None else None
    high, low = (model, low_noise_model) if found is None else (found.high, found.low)
    config = check_pair_files(high, low, CLI_PAIR_FIX if found is None else PAIR_FIX)
    boundary = found.boundary if found is not None and found.boundary is not None else default_boundary(config)
    with torch.device("meta"):
        dit = WanDiT(config)
    pair = Experts(dit, dit, boundary)
    preset = ModelDefaults.from_dict({**default_teacher_settings(config), **(defaults or {})}, f"{model}: defaults")
    space = _vae_space(vae, config.out_dim)
    return VideoPipeline(Path(model).stem, {"rcm": pair, "teacher": pair}, space, defaults=preset).resolve(settings)


def _vae_space(vae: str | None, channels: int) -> LatentSpace:
    """The latent space of the Wan VAE file given (its z_dim read from the header), else of the one a DiT making
    `channels`-channel latents is made for."""
    if vae:
        from .loading.vae import inspect_vae

        channels = inspect_vae(vae).z_dim
    return wan_latent_space(channels)


def _bundle_vae_file(bundle) -> str | None:
    file = bundle.autoencoder.get("file")
    return str(bundle.folder / file) if file else None


def _disk_bytes(path: str | None) -> int:
    """Bytes a weight file or folder holds on disk (0 for 'minilm', None or a missing path)."""
    if not path or path == "minilm" or not Path(path).expanduser().exists():
        return 0
    p = Path(path).expanduser()
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
