"""The pipeline cut into stages with small objects between them, for node graphs (ComfyUI) and other hosts.

`pipeline.VideoPipeline` runs prompt -> file in one call. A node graph instead loads the DiT, the text encoder and
the autoencoder separately, encodes prompts once for several samplers, and passes latents to other tools. The
objects that cross between stages:

- `AliceModel`: the DiT(s) with the latent space they denoise in, the model's defaults and any LoRAs applied;
- `Conditioning`: encoded positive and negative prompts;
- latents, in two forms: *normalised* (what the DiT sees, what `VideoAutoencoder` takes) inside Alice, and *raw*
  (un-normalised autoencoder latents) in ComfyUI LATENT dicts, because that is what ComfyUI's own VAE nodes and
  latent formats expect: with the Wan2.1 VAE, ComfyUI's VAEDecode decodes an Alice LATENT directly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bundle import ModelBundle, resolve_bundle
from .errors import AliceError
from .limits import NODE_WORDS
from .loading.quant import PRECISION_NAMES
from .models.config import WanVAEConfig
from .models.dit import WanDiT
from .models.interfaces import TextEncoder, VideoAutoencoder
from .models.runtime import DiTRuntime, prepare_dit
from .models.space_to_depth import SpaceToDepthAutoencoder
from .models.vae import WanVAE
from .pipeline import GenerationSettings, VideoPipeline, load_autoencoder
from .sampling import ProgressFn, StepControl

MODEL_PRECISIONS = ("auto", *PRECISION_NAMES)
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- latent spaces


@dataclass(frozen=True)
class LatentSpace:
    """What a latent tensor means: channel count, strides, and the normalisation between raw and DiT latents.

    Has the `latent_channels` / `temporal_stride` / `spatial_stride` attributes of `VideoAutoencoder`, which is
    all `VideoPipeline` needs to validate sizes and shape noise, so a model can sample without its VAE loaded.
    """

    name: str
    latent_channels: int
    temporal_stride: int
    spatial_stride: int
    mean: tuple[float, ...]  # one value for all channels, or one per channel
    std: tuple[float, ...]

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=like.device).view(shape)
        return mean, std

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return latents.float() * std + mean

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(raw)
        return (raw.float() - mean) / std


def wan21_latent_space() -> LatentSpace:
    cfg = WanVAEConfig()
    return LatentSpace("Wan2.1 VAE", cfg.z_dim, cfg.temporal_stride, cfg.spatial_stride, cfg.latents_mean, cfg.latents_std)


def latent_space_for(spec: dict) -> LatentSpace:
    """The latent space of a bundle's autoencoder spec, without loading any weights."""
    if spec.get("type") == "space_to_depth":
        return latent_space_of(load_autoencoder(spec, Path(".")))  # weight-free: building it costs nothing
    if spec.get("type") == "wan_vae":
        return wan21_latent_space()
    raise AliceError(f"model.json: autoencoder.type must be 'space_to_depth' or 'wan_vae', got {spec.get('type')!r}")


def latent_space_of(autoencoder: VideoAutoencoder) -> LatentSpace:
    if isinstance(autoencoder, SpaceToDepthAutoencoder):
        c = autoencoder.config
        return LatentSpace(
            f"space-to-depth {c.temporal_stride}x{c.spatial_stride}x{c.spatial_stride}"
            + ("" if c.block_transform == "none" else f" {c.block_transform}"), autoencoder.latent_channels,
            c.temporal_stride, c.spatial_stride, (c.mean,), (c.std,),
        )
    if isinstance(autoencoder, WanVAE):
        c = autoencoder.config
        return LatentSpace("Wan2.1 VAE", c.z_dim, c.temporal_stride, c.spatial_stride, c.latents_mean, c.latents_std)
    raise AliceError(f"unsupported autoencoder {type(autoencoder).__name__}; use the space-to-depth latent or a Wan2.1 VAE")


def to_comfy_latent(latents: torch.Tensor, space: LatentSpace) -> dict[str, torch.Tensor]:
    """Normalised DiT latents [B, C, F, H, W] -> a ComfyUI LATENT dict holding raw latents on the CPU."""
    return {"samples": space.to_raw(latents).cpu()}


def from_comfy_latent(latent: dict, space: LatentSpace) -> torch.Tensor:
    """A ComfyUI LATENT dict -> normalised latents for `space`, with an error naming the mismatch."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise AliceError(f"a video LATENT must hold 'samples' [B, C, F, H, W], got {shape}")
    if samples.shape[1] != space.latent_channels:
        raise AliceError(
            f"the latent has {samples.shape[1]} channels but the {space.name} takes {space.latent_channels}; "
            "decode with the VAE that matches the model (alice-tiny: the 'alice-tiny' VAE entry)"
        )
    return space.from_raw(samples)


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class AliceModel:
    """DiT(s) ready to sample. `dits` maps sampler name ("rcm" student, "teacher") to its network."""

    name: str
    dits: dict[str, WanDiT]
    latent_space: LatentSpace
    defaults: dict = field(default_factory=dict)
    loras: tuple[tuple[str, float], ...] = ()
    device: torch.device = torch.device("cpu")  # where sampling runs
    offload_device: torch.device | None = None  # where the weights wait between runs (None: stay on `device`)

    @contextmanager
    def placed(self) -> Iterator[None]:
        """Weights on the compute device for the duration; back to the offload device afterwards. A block-swapped
        DiT places itself, block by block."""
        movable = [dit for dit in self.dits.values() if getattr(dit, "block_swap", None) is None]
        for dit in movable:
            dit.to(self.device)
        try:
            yield
        finally:
            if self.offload_device is not None:
                for dit in movable:
                    dit.to(self.offload_device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': float32 on the CPU (fast there, and exact), bf16 on GPUs that have it, else fp16."""
    if precision not in MODEL_PRECISIONS:
        raise AliceError(f"unknown precision {precision!r}; use one of {', '.join(MODEL_PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cpu":
        return "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def load_model(
    source: str | Path,
    precision: str = "auto",
    device: str | torch.device = "cpu",
    offload_device: str | torch.device | None = None,
    runtime: DiTRuntime = DiTRuntime(),
) -> AliceModel:
    """A bundled model name, a bundle folder (or its model.json), or a single Wan2.1 T2V DiT checkpoint.

    precision: auto, fp32, bf16, fp16, or the quantised fp8_e4m3fn / fp8_e5m2 / nf4 (see loading/quant.py).
    runtime: attention kernel, block swap (K blocks on `device`, the rest streamed from CPU memory), compile."""
    from .loading.dit import load_dit

    device = torch.device(device)
    offload = torch.device(offload_device) if offload_device is not None else None
    precision = resolve_precision(precision, device)
    path = Path(source).expanduser()
    bundle = resolve_bundle(str(path.parent if path.name == "model.json" else source))
    if bundle is not None:
        name, files, defaults = bundle.name, bundle.dits, bundle.defaults
        space = latent_space_for(bundle.autoencoder)
    else:
        name, files, defaults = path.stem, {"rcm": path, "teacher": path}, {}  # one network serves both samplers
        space = wan21_latent_space()

    by_file: dict[Path, WanDiT] = {}  # load a file once even when several samplers share it
    for file in files.values():
        if file not in by_file:
            # A swapped model is read into CPU memory, then K blocks go to the device; otherwise it is read where it
            # waits between runs.
            swapped = runtime.blocks_on_device is not None
            dit = load_dit(file, precision=precision, device="cpu" if swapped else offload or device)
            prepare_dit(dit, device if swapped else offload or device, runtime)
            if dit.config.in_dim != space.latent_channels:
                raise AliceError(
                    f"{file}: the DiT takes {dit.config.in_dim} latent channels but the {space.name} has "
                    f"{space.latent_channels}; Alice runs Wan2.1 text-to-video checkpoints (in_dim 16)"
                )
            by_file[file] = dit
    dits = {sampler: by_file[file] for sampler, file in files.items()}
    return AliceModel(name, dits, space, defaults, device=device, offload_device=offload)


def with_lora(model: AliceModel, lora: str | Path, strength: float) -> AliceModel:
    """A new model with the LoRA applied to every DiT it is for (an `alice finetune` LoRA names one); `model`
    itself is left unchanged, because a node graph keeps using it (other branches, reruns with another strength).
    Costs one copy of the patched DiT weights."""
    from .loading.lora import apply_lora, lora_samplers

    wanted = lora_samplers(lora, list(model.dits))
    patched: dict[int, WanDiT] = {}  # a DiT shared by both samplers is patched once and stays shared
    for sampler, dit in model.dits.items():
        if id(dit) in patched or sampler not in wanted:
            continue
        copy = deepcopy(dit)
        report = apply_lora(copy, lora, strength)
        if report.matched == 0:
            raise AliceError(
                f"{lora}: none of its {report.total} keys fit {model.name!r}; use a LoRA made for this model "
                "(same Wan architecture and size)"
            )
        if report.unmatched:
            logger.warning(report.summary())
        patched[id(dit)] = copy
    dits = {sampler: patched.get(id(dit), dit) for sampler, dit in model.dits.items()}
    return dataclasses.replace(model, dits=dits, loras=(*model.loras, (Path(lora).name, float(strength))))


# ---------------------------------------------------------------- text, sampling, decoding


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts [1, L, dim] on the CPU; the teacher uses `negative` for classifier-free guidance."""

    prompt: str
    negative_prompt: str
    positive: torch.Tensor
    negative: torch.Tensor


def encode_prompts(encoder: TextEncoder, prompt: str, negative_prompt: str = "") -> Conditioning:
    if not prompt.strip():
        raise AliceError("the prompt is empty; describe the video, e.g. \"a red ball bouncing\"")
    with torch.inference_mode():
        states = encoder.encode([prompt, negative_prompt]).float().cpu()
    return Conditioning(prompt, negative_prompt, states[:1], states[1:])


def sample(
    model: AliceModel,
    conditioning: Conditioning,
    settings: GenerationSettings,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Normalised latents [1, C, F, H, W] for `settings` (prompt texts come from `conditioning`)."""
    if settings.sampler not in model.dits:
        other = " or ".join(f"the {s} sampler" for s in model.dits)
        raise AliceError(f"model {model.name!r} has no weights for the {settings.sampler} sampler; use {other}")
    # VideoPipeline validates sizes and runs the samplers; it needs only the latent geometry, not a VAE or encoder.
    pipe = VideoPipeline(model.name, None, model.latent_space, model.dits, model.defaults, model.device)
    resolved = pipe.resolve(dataclasses.replace(
        settings, prompt=conditioning.prompt, negative_prompt=conditioning.negative_prompt,
    ))
    pipe.check_memory(resolved, decode=False, words=NODE_WORDS)
    positive = conditioning.positive.to(model.device)
    negative = conditioning.negative.to(model.device) if resolved.sampler == "teacher" and resolved.guidance != 1.0 else None
    control = StepControl(progress=progress, should_cancel=should_cancel)
    with model.placed():
        return pipe.sample(resolved, positive, negative, control)


def load_vae(source: str | Path, precision: str = "fp32", device: str | torch.device = "cpu") -> VideoAutoencoder:
    """A bundled model's autoencoder (by name, bundle folder or its model.json) or a Wan2.1 VAE file."""
    from .loading.vae_keys import load_wan_vae
    from .pipeline import parse_precision

    dtype = parse_precision(precision)
    path = Path(source).expanduser()
    bundle: ModelBundle | None = resolve_bundle(str(path.parent if path.name == "model.json" else source))
    autoencoder = load_autoencoder(bundle.autoencoder, bundle.folder, dtype) if bundle else load_wan_vae(path, dtype)
    return autoencoder.to(device) if isinstance(autoencoder, torch.nn.Module) else autoencoder


def decode_frames(
    autoencoder: VideoAutoencoder, latents: torch.Tensor, tiled: bool = False, tile_size: int = 256, overlap: int = 64
) -> torch.Tensor:
    """Normalised latents [B, C, F, H, W] -> frames float32 [B*F, H, W, 3] in 0..1 on the CPU (ComfyUI IMAGE).

    Tiling (sizes in pixels) applies to the Wan VAE; the space-to-depth latent is a reshape that needs none."""
    if tiled and not 0 <= overlap < tile_size:
        raise AliceError(f"tiled decoding needs 0 <= overlap < tile_size, got overlap {overlap}, tile_size {tile_size}")
    with torch.inference_mode():
        if isinstance(autoencoder, WanVAE) and tiled:
            stride = autoencoder.spatial_stride
            video = autoencoder.decode(latents, tiled=True, tile_latent=max(1, tile_size // stride),
                                       overlap_latent=overlap // stride)
        else:
            video = autoencoder.decode(latents)
    frames = (video.float().clamp(-1, 1) + 1) / 2  # [B, 3, F, H, W]
    return frames.permute(0, 2, 3, 4, 1).reshape(-1, *frames.shape[3:], 3).cpu().contiguous()
