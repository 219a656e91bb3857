"""Everything `load_pipeline` + generation would refuse that needs no weights, checked from file headers and
model.json before anything is loaded: a bad setting or a generation too large for the device costs no load time."""

from __future__ import annotations

from pathlib import Path

import torch

from .bundle import ModelDefaults, resolve_bundle
from .errors import AliceError
from .generation import GenerationSettings
from .limits import GenerationShape, check_generation_memory, parse_device
from .models.config import WAN22_VAE, WanVAEConfig
from .models.dit import WanDiT
from .models.latent_space import LatentSpace, latent_space_for


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
) -> GenerationSettings | None:
    """The settings against the model's architecture and latent space (read from headers and model.json), and the
    memory the generation needs against what the device has free (`defaults`: a catalogue model's preset, as for
    `load_pipeline`). Returns the resolved settings; None for expert pairs, which generation checks once loaded."""
    from .loading.experts import find_expert_pair
    from .loading.formats import inspect_checkpoint
    from .loading.precision import check_precision
    from .pipeline import VideoPipeline, check_image_encoder

    check_precision(precision)
    dev = parse_device(device)
    bundle = resolve_bundle(model) if low_noise_model is None else None
    if bundle is None and (low_noise_model is not None or find_expert_pair(model) is not None):
        return None
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
    else:  # the Wan VAE the DiT is made for (the loaded pipeline checks the VAE actually given)
        space = wan_latent_space(next(iter(configs.values())).out_dim)
    with torch.device("meta"):
        dits = {sampler: WanDiT(config) for sampler, config in configs.items()}
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


def wan_latent_space(channels: int) -> LatentSpace:
    """The latent space of the Wan VAE that makes `channels`-channel latents (Wan2.2's 48, else Wan2.1's 16)."""
    cfg = WAN22_VAE if channels == WAN22_VAE.z_dim else WanVAEConfig()
    name = "Wan2.2 VAE" if cfg is WAN22_VAE else "Wan2.1 VAE"
    return LatentSpace(name, cfg.z_dim, cfg.temporal_stride, cfg.spatial_stride, cfg.latents_mean, cfg.latents_std)


def _bundle_vae_file(bundle) -> str | None:
    file = bundle.autoencoder.get("file")
    return str(bundle.folder / file) if file else None


def _disk_bytes(path: str | None) -> int:
    """Bytes a weight file or folder holds on disk (0 for 'minilm', None or a missing path)."""
    if not path or path == "minilm" or not Path(path).expanduser().exists():
        return 0
    p = Path(path).expanduser()
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
