"""One straight path: prompt -> text embeddings -> latents -> frames -> file."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bundle import SAMPLERS, ModelBundle, resolve_bundle
from .errors import AliceError
from .conditioning import ImageCondition
from .expert_swap import ExpertSwap, velocities
from .limits import (
    CLI_WORDS, GenerationShape, check_bounds, check_finite, check_generation_memory, check_prompt_text,
)
from .models.dit import WanDiT
from .models.interfaces import TextEncoder, VideoAutoencoder
from .models.runtime import DiTRuntime, prepare_dit
from .models.vae import WanVAE
from .sampling import RCM_MAX_STEPS, Experts, ProgressFn, StepControl, sample_flow_matching, sample_rcm

# Precision name -> compute dtype. fp8_e4m3fn / fp8_e5m2 / nf4 store the DiT's and umT5's Linear weights quantised
# (alice_core/loading/quant.py) and run everything else, the VAE included, in bf16.
PRECISIONS = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
    "fp8_e4m3fn": torch.bfloat16, "fp8_e5m2": torch.bfloat16, "nf4": torch.bfloat16,
}
DEFAULT_STEPS = {"rcm": 4, "teacher": 50}
TI2V_CHANNELS = 48  # Wan2.2 TI2V-5B's latent: text-to-video, or image-to-video with the image as first frame
MAX_TEACHER_STEPS = 1000


@dataclass
class GenerationSettings:
    """What to generate. None means "the model's default"."""

    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | None = None
    sigma_max: float | None = None
    ode: bool = False
    guidance: float | None = None
    shift: float | None = None
    boundary: float | None = None  # two-expert models: RF time where the low-noise expert takes over
    image: str | None = None  # image-to-video: the start image's name (the picture itself goes to generate())


@dataclass
class GeneratedVideo:
    frames: np.ndarray                 # uint8 [F, H, W, 3]
    settings: GenerationSettings       # fully resolved
    model_name: str
    timings: dict[str, float] = field(default_factory=dict)
    experts: list[str] = field(default_factory=list)  # two-expert models: "high" / "low" per step

    def metadata(self) -> dict[str, str | int | float]:
        meta = {k: v for k, v in dataclasses.asdict(self.settings).items() if v is not None}
        meta.update(model=self.model_name, software=f"alice {__version__}")
        if self.experts:
            meta["experts"] = ",".join(self.experts)
        return meta


def dit_config(dit: WanDiT | Experts[WanDiT]):
    """The architecture of a DiT or of an expert pair (both experts share it)."""
    return (dit.high if isinstance(dit, Experts) else dit).config


class VideoPipeline:
    def __init__(
        self,
        name: str,
        text_encoder: TextEncoder,
        autoencoder: VideoAutoencoder,
        dits: dict[str, WanDiT | Experts[WanDiT]],
        defaults: dict | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not dits:
            raise AliceError(f"model {name!r} has no DiT weights")
        self.name = name
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.dits = dits
        self.defaults = defaults or {}
        self.device = torch.device(device)
        self.image_encoder = None  # Wan2.1 I2V: the CLIP vision encoder (models/clip_vision.py)
        self.swaps = {
            sampler: ExpertSwap(pair, self.device) for sampler, pair in dits.items() if isinstance(pair, Experts)
        }

    # -- settings -----------------------------------------------------------------------------------------------
    def resolve(self, s: GenerationSettings) -> GenerationSettings:
        """Fill defaults and validate, with errors that name the fix."""
        d = self.defaults
        if not s.prompt or not s.prompt.strip():
            raise AliceError("the prompt is empty; describe the video, e.g. \"a red ball bouncing\"")
        check_prompt_text(s.prompt, "the prompt")
        check_prompt_text(s.negative_prompt, "the negative prompt")
        s = dataclasses.replace(s, sampler=s.sampler or d.get("sampler", "rcm"))
        if s.sampler not in SAMPLERS:
            raise AliceError(f"unknown sampler {s.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if s.sampler not in self.dits:
            raise AliceError(
                f"model {self.name!r} has no weights for the {s.sampler!r} sampler; use --sampler "
                f"{' or '.join(self.dits)}"
            )
        def pick(value, key: str, fallback):
            return value if value is not None else d.get(key, fallback)

        r = dataclasses.replace(
            s,
            negative_prompt=pick(s.negative_prompt, "negative_prompt", ""),
            steps=pick(s.steps, f"{s.sampler}_steps", DEFAULT_STEPS[s.sampler]),
            width=pick(s.width, "width", 832),
            height=pick(s.height, "height", 480),
            frames=pick(s.frames, "frames", 81),
            fps=pick(s.fps, "fps", 16),
            sigma_max=pick(s.sigma_max, "sigma_max", 80.0),
            guidance=pick(s.guidance, "guidance", 5.0),
            shift=pick(s.shift, "shift", 5.0),
        )
        check_finite(r.guidance, "--guidance")
        check_finite(r.shift, "--shift", positive=True)
        check_finite(r.sigma_max, "--sigma-max", positive=True)
        r = self._resolve_experts_and_image(r)
        max_steps = RCM_MAX_STEPS if r.sampler == "rcm" else MAX_TEACHER_STEPS
        if not 1 <= r.steps <= max_steps:
            raise AliceError(f"steps must be 1..{max_steps} for the {r.sampler} sampler, got {r.steps}")
        ts = self.autoencoder.temporal_stride
        if r.frames < 1 or (r.frames - 1) % ts:
            raise AliceError(f"frames must be {ts}k+1 (e.g. {4 * ts + 1}), got {r.frames}; use --frames {self._nearest_frames(r.frames)}")
        multiple = self.autoencoder.spatial_stride * dit_config(self.dits[r.sampler]).patch_size[1]
        for label, value in (("width", r.width), ("height", r.height)):
            if value < multiple or value % multiple:
                fixed = max(multiple, round(value / multiple) * multiple)
                raise AliceError(f"{label} must be a multiple of {multiple}, got {value}; use --{label} {fixed}")
        check_bounds(r.width, r.height, r.frames)
        if not 1 <= r.fps <= 120:
            raise AliceError(f"fps must be 1..120, got {r.fps}")
        if not 0 <= r.seed < 2**63:
            raise AliceError(f"seed must be 0..2^63-1, got {r.seed}")
        return r

    def _resolve_experts_and_image(self, r: GenerationSettings) -> GenerationSettings:
        dit = self.dits[r.sampler]
        cfg = dit_config(dit)
        if isinstance(dit, Experts):
            r = dataclasses.replace(r, boundary=self.defaults.get("boundary", dit.boundary) if r.boundary is None else r.boundary)
            Experts(None, None, r.boundary)  # validates: one line naming the range
        elif r.boundary is not None:
            raise AliceError(f"--boundary is for two-expert (Wan2.2 A14B) models; {self.name!r} has one DiT: drop --boundary")
        if cfg.in_dim > cfg.out_dim and r.image is None:
            raise AliceError(f"{self.name!r} is an image-to-video model: pass a start image (--image START.png)")
        if cfg.in_dim == cfg.out_dim != TI2V_CHANNELS and r.image is not None:
            raise AliceError(f"{self.name!r} is a text-to-video model: it takes no start image; drop --image")
        if cfg.out_dim != self.autoencoder.latent_channels:
            raise AliceError(
                f"{self.name!r} makes {cfg.out_dim}-channel latents but the VAE has {self.autoencoder.latent_channels}; "
                f"use the {'Wan2.2 VAE (z_dim 48)' if cfg.out_dim == 48 else 'Wan2.1 VAE (z_dim 16)'} (--vae)"
            )
        return r

    def check_memory(
        self, s: GenerationSettings, decode: bool = True, words: tuple[str, str, str] = CLI_WORDS
    ) -> dict[str, int]:
        """Refuse, naming what to lower, resolved settings whose sampling (and decoding) would not fit in the
        device's free memory; the weights are already loaded, so only what the run adds is counted."""
        ae, dit = self.autoencoder, self.dits[s.sampler]
        shape = GenerationShape(dit=dit_config(dit), dit_count=0, other_weight_bytes=0, temporal_stride=ae.temporal_stride,
                                spatial_stride=ae.spatial_stride, wan_vae=isinstance(ae, WanVAE))
        precision = "fp32" if (dit.high if isinstance(dit, Experts) else dit).dtype == torch.float32 else "bf16"
        return check_generation_memory(shape, precision, s.width, s.height, s.frames, self.device, decode, words)

    def _nearest_frames(self, frames: int) -> int:
        ts = self.autoencoder.temporal_stride
        return max(1, round((frames - 1) / ts)) * ts + 1

    # -- the path ------------------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder.encode(prompts).to(self.device)

    def latent_shape(self, s: GenerationSettings) -> tuple[int, int, int, int, int]:
        ae = self.autoencoder
        return (1, ae.latent_channels, 1 + (s.frames - 1) // ae.temporal_stride, s.height // ae.spatial_stride, s.width // ae.spatial_stride)

    def sample(
        self,
        s: GenerationSettings,
        context: torch.Tensor,
        negative_context: torch.Tensor | None,
        control: StepControl,
        condition: ImageCondition | None = None,
    ) -> torch.Tensor:
        """Latents for resolved settings `s`, starting from an image when `condition` is given."""
        condition = condition or ImageCondition()
        y, clip, first_frame = condition.y, condition.clip, condition.first_frame
        dits = self.dits[s.sampler]
        if isinstance(dits, Experts):
            dits = Experts(dits.high, dits.low, s.boundary)
            dtype = dits.high.dtype
        else:
            dtype = dits.dtype
        if dtype in (torch.bfloat16, torch.float16):
            control.timestep_dtype = dtype
        swap = self.swaps.get(s.sampler)
        generator = torch.Generator().manual_seed(s.seed)
        shape = self.latent_shape(s)
        cond = velocities(dits, context, y, clip, swap=swap, first_frame=first_frame)
        if s.sampler == "rcm":
            latents = sample_rcm(cond, shape, generator, s.steps, s.sigma_max, s.ode, self.device, control)
        else:
            uncond = None if negative_context is None else velocities(
                dits, negative_context, y, clip, swap=swap, first_frame=first_frame)
            latents = sample_flow_matching(
                cond, uncond, shape, generator, s.steps, s.guidance, s.shift, self.device, control)
        return latents if first_frame is None else first_frame.apply(latents)

    def image_condition(self, s: GenerationSettings, image: np.ndarray | torch.Tensor | None) -> ImageCondition | None:
        """What the start image gives the DiT (see `conditioning.py`); None for text-to-video."""
        from .conditioning import FirstFrame, fit_image, image_condition

        cfg = dit_config(self.dits[s.sampler])
        if image is None:
            if cfg.in_dim > cfg.out_dim:
                raise AliceError(f"{self.name!r} is an image-to-video model: pass a start image (--image START.png)")
            return None
        start = fit_image(image, s.width, s.height).to(self.device)
        if cfg.in_dim == cfg.out_dim:
            return ImageCondition(first_frame=FirstFrame.encode(self.autoencoder, start))
        if cfg.image_dim is not None:
            check_image_encoder(self.name, cfg.image_dim, self.image_encoder)
        clip = self.image_encoder.encode(start) if cfg.image_dim is not None else None
        return ImageCondition(y=image_condition(self.autoencoder, start, s.frames), clip=clip)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            video = self.autoencoder.decode(latents)
        return frames_from_video(video)[0]

    def generate(
        self,
        settings: GenerationSettings,
        progress: ProgressFn | None = None,
        should_cancel: Callable[[], bool] | None = None,
        image: np.ndarray | torch.Tensor | None = None,
    ) -> GeneratedVideo:
        """The video for `settings`; `image` is the start picture of an image-to-video model (uint8 [H, W, 3])."""
        if image is not None and settings.image is None:
            settings = dataclasses.replace(settings, image="image")
        s = self.resolve(settings)
        self.check_memory(s)
        timings = {}
        start = time.perf_counter()
        if s.sampler == "teacher" and s.guidance != 1.0:
            both = self.encode_text([s.prompt, s.negative_prompt])
            context, negative = both[:1], both[1:]
        else:
            context, negative = self.encode_text([s.prompt]), None
        timings["text_encoding"] = time.perf_counter() - start

        start = time.perf_counter()
        condition = self.image_condition(s, image)
        if condition is not None:
            timings["image_encoding"] = time.perf_counter() - start

        start = time.perf_counter()
        control = StepControl(progress=progress, should_cancel=should_cancel)
        latents = self.sample(s, context, negative, control, condition)
        timings["sampling"] = time.perf_counter() - start

        start = time.perf_counter()
        frames = self.decode(latents)
        timings["decoding"] = time.perf_counter() - start
        return GeneratedVideo(frames=frames, settings=s, model_name=self.name, timings=timings, experts=control.experts)

    def save(self, video: GeneratedVideo, path: str | Path, crf: int = 19) -> Path:
        from .video_io import write_video

        return write_video(video.frames, path, fps=video.settings.fps, metadata=video.metadata(), crf=crf)


def frames_from_video(video: torch.Tensor) -> np.ndarray:
    """Decoded video [B, 3, F, H, W] in [-1, 1] -> uint8 frames [B, F, H, W, 3]."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


# -- loading --------------------------------------------------------------------------------------------------------
def parse_precision(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise AliceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}") from None


def load_autoencoder(spec: dict, folder: Path, dtype: torch.dtype = torch.float32) -> VideoAutoencoder:
    kind = spec.get("type")
    if kind == "space_to_depth":
        from .models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig

        return SpaceToDepthAutoencoder(SpaceToDepthConfig(**{k: v for k, v in spec.items() if k != "type"}))
    if kind == "wan_vae":
        from .loading.vae_keys import load_wan_vae

        return load_wan_vae(folder / spec["file"], dtype=dtype)
    raise AliceError(f"{folder / 'model.json'}: autoencoder.type must be 'space_to_depth' or 'wan_vae', got {kind!r}")


def load_pipeline(
    model: str | None = None,
    precision: str = "fp32",
    vae: str | None = None,
    text_encoder: str | None = None,
    device: str = "cpu",
    low_noise_model: str | None = None,
    boundary: float | None = None,
    defaults: dict | None = None,
    runtime: DiTRuntime = DiTRuntime(),
    clip_vision: str | None = None,
) -> VideoPipeline:
    """A pipeline for a bundled model name, a bundle folder, a Wan checkpoint file (+ `vae` and `text_encoder`),
    or a Wan2.2 expert pair: an official / diffusers pipeline folder, or `model` (high noise) + `low_noise_model`.
    `defaults` are a checkpoint's preset (a catalogue model's steps, sigma_max, boundary, size, ...).
    runtime: the DiT's attention kernel, block swap and compile (single DiTs; an expert pair keeps its own swap).
    clip_vision: the CLIP image encoder a Wan2.1 I2V model needs."""
    from .loading.dit import load_dit
    from .loading.experts import find_expert_pair, load_expert_pair
    from .models.text_encoders import load_text_encoder

    def dit_from(path) -> WanDiT:
        # block swap: read into CPU memory, then K blocks go to the device
        dit = load_dit(path, precision=precision, device="cpu" if runtime.blocks_on_device is not None else device)
        return prepare_dit(dit, device, runtime)

    dtype = parse_precision(precision)
    bundle = resolve_bundle(model) if low_noise_model is None else None
    if bundle is not None:
        te = load_text_encoder(text_encoder or _bundle_path(bundle, bundle.text_encoder), precision=precision)
        ae = load_autoencoder({"type": "wan_vae", "file": str(Path(vae).resolve())}, Path("."), dtype) if vae else load_autoencoder(bundle.autoencoder, bundle.folder, dtype)
        dits = {k: dit_from(p) for k, p in bundle.dits.items()}
        return VideoPipeline(bundle.name, te, ae, dits, bundle.defaults, device)

    # A single checkpoint or pair: the same weights serve whichever sampler the user picks. A single file's header
    # says whether it is a DiT checkpoint (and which) before anything else is asked for or loaded.
    from .loading.formats import inspect_checkpoint

    if low_noise_model is None and find_expert_pair(model) is None:
        inspect_checkpoint(model)
    if vae is None or text_encoder is None:
        raise AliceError(
            f"{model} is a single DiT checkpoint: also pass --vae PATH (Wan VAE) and --text-encoder PATH (umT5 folder)"
        )
    from .loading.vae_keys import load_wan_vae

    pair = find_expert_pair(model) if low_noise_model is None else None
    if low_noise_model is not None or pair is not None:
        high, low = (model, low_noise_model) if pair is None else (pair.high, pair.low)
        folder_boundary = pair.boundary if pair is not None else None
        # two 14B experts: both wait in CPU memory, the one in use moves to the device (ExpertSwap)
        dit = load_expert_pair(high, low, precision, boundary if boundary is not None else folder_boundary, "cpu")
    elif boundary is not None:
        raise AliceError("--boundary is for two-expert (Wan2.2 A14B) models: also pass --low-noise-model LOW")
    else:
        dit = dit_from(model)
    te = load_text_encoder(text_encoder, precision=precision)
    pipe = VideoPipeline(
        Path(model).stem, te, load_wan_vae(vae, dtype=dtype), {"rcm": dit, "teacher": dit}, defaults or {}, device
    )
    if clip_vision is not None:
        from .loading.clip_vision import load_clip_vision

        pipe.image_encoder = load_clip_vision(clip_vision)
    return pipe


def check_image_encoder(name: str, image_dim: int, encoder) -> None:
    """A Wan2.1 I2V model needs the CLIP vision encoder, with tokens as wide as its `img_emb` takes."""
    if encoder is None:
        raise AliceError(
            f"{name!r} is a Wan2.1 image-to-video model: it needs the CLIP vision encoder; pass --clip-vision "
            "PATH (ComfyUI's clip_vision_h.safetensors or a transformers CLIPVisionModel folder)"
        )
    if encoder.width != image_dim:
        raise AliceError(
            f"the CLIP vision encoder gives {encoder.width}-wide tokens but {name!r} takes {image_dim} "
            "(CLIP ViT-H/14): pass the CLIP file Wan ships"
        )


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
    """Everything `load_pipeline` + `generate` would refuse that needs no weights: the settings against the model's
    architecture and latent space (read from headers and model.json), and the memory the generation needs against
    what the device has free (`defaults`: a catalogue model's preset, as for `load_pipeline`). Returns the resolved
    settings; None for expert pairs, which `generate` checks once loaded."""
    from .limits import parse_device
    from .loading.experts import find_expert_pair
    from .loading.formats import inspect_checkpoint
    from .stages import latent_space_for

    parse_precision(precision)
    dev = parse_device(device)
    bundle = resolve_bundle(model) if low_noise_model is None else None
    if bundle is None and (low_noise_model is not None or find_expert_pair(model) is not None):
        return None
    if bundle is not None:
        files, defaults, name = dict(bundle.dits), bundle.defaults, bundle.name
        others = [text_encoder or _bundle_path(bundle, bundle.text_encoder), vae or _bundle_vae_file(bundle)]
    else:
        if settings.boundary is not None:  # as load_pipeline says it, before any weight is read
            raise AliceError("--boundary is for two-expert (Wan2.2 A14B) models: also pass --low-noise-model LOW")
        files, defaults, name = {"rcm": Path(model), "teacher": Path(model)}, defaults or {}, Path(model).stem
        others = [text_encoder, vae]
    configs = {sampler: inspect_checkpoint(file).config for sampler, file in files.items()}
    if bundle is not None and not vae:
        space = latent_space_for(bundle.autoencoder)
    else:  # the Wan VAE the DiT is made for (the loaded pipeline checks the VAE actually given)
        space = _wan_latent_space(next(iter(configs.values())).out_dim)
    with torch.device("meta"):
        dits = {sampler: WanDiT(config) for sampler, config in configs.items()}
    resolved = VideoPipeline(name, None, space, dits, defaults, dev).resolve(settings)
    image_dim = configs[resolved.sampler].image_dim
    if image_dim is not None and clip_vision is None:
        check_image_encoder(name, image_dim, None)
    shape = GenerationShape(
        dit=configs[resolved.sampler], dit_count=len(set(files.values())), other_weight_bytes=sum(map(_disk_bytes, others)),
        temporal_stride=space.temporal_stride, spatial_stride=space.spatial_stride, wan_vae=space.name.startswith("Wan"),
    )
    check_generation_memory(shape, precision, resolved.width, resolved.height, resolved.frames, dev)
    return resolved


def _wan_latent_space(channels: int):
    from .models.config import WAN22_VAE, WanVAEConfig
    from .stages import LatentSpace

    cfg = WAN22_VAE if channels == WAN22_VAE.z_dim else WanVAEConfig()
    name = "Wan2.2 VAE" if cfg is WAN22_VAE else "Wan2.1 VAE"
    return LatentSpace(name, cfg.z_dim, cfg.temporal_stride, cfg.spatial_stride, cfg.latents_mean, cfg.latents_std)


def _bundle_vae_file(bundle: ModelBundle) -> str | None:
    file = bundle.autoencoder.get("file")
    return str(bundle.folder / file) if file else None


def _disk_bytes(path: str | None) -> int:
    """Bytes a weight file or folder holds on disk (0 for 'minilm', None or a missing path)."""
    if not path or path == "minilm" or not Path(path).expanduser().exists():
        return 0
    p = Path(path).expanduser()
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _bundle_path(bundle: ModelBundle, ref: str) -> str:
    return ref if ref == "minilm" else str(bundle.folder / ref)
