"""The one front door: prompt -> text embeddings -> latents -> frames -> file, in one call or in stages.

`VideoPipeline` is used whole by the CLI and the app (`pipe(settings)` or `pipe.generate(settings)`) and in stages
by node graphs, like diffusers' pipelines with `prompt_embeds` / `latents` / `output_type="latent"`:

    conditioning = encode_prompts(text_encoder, prompt, negative)   # or pipe.encode_prompts(...)
    latents = pipe.sample(settings, conditioning, latents=None)     # normalised latents [1, C, F, H, W]
    frames = pipe.decode(latents)                                   # uint8 [F, H, W, 3]
    pipe.save(GeneratedVideo(...), path)                            # records prompt, settings and LoRAs

A pipeline may hold only its DiT(s) (a node graph loads the text encoder and the VAE separately): sampling needs
only the latent geometry (`LatentSpace`). Host formats (ComfyUI's LATENT / IMAGE) are the hosts' business (nodes/).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .bundle import SAMPLERS, ModelDefaults, resolve_bundle
from .errors import AliceError
from .conditioning import ImageCondition
from .expert_swap import ExpertSwap, velocities
from .limits import CLI_WORDS, GenerationShape, check_bounds, check_finite, check_generation_memory, check_prompt_text
from .generation import (
    Conditioning, GeneratedVideo, GenerationSettings, decode_latents, dit_config, encode_prompts, frames_from_video,
)
from .models.dit import WanDiT
from .models.interfaces import TextEncoder, VideoAutoencoder
from .models.latent_space import LatentSpace, latent_space_for, latent_space_of, wan_latent_space
from .models.runtime import DiTRuntime, prepare_dit
from .models.vae import WanVAE
from .sampling import RCM_MAX_STEPS, Experts, ProgressFn, StepControl, sample_flow_matching, sample_rcm

TI2V_CHANNELS = 48  # Wan2.2 TI2V-5B's latent: text-to-video, or image-to-video with the image as first frame
MAX_TEACHER_STEPS = 1000
__all__ = ["Conditioning", "GeneratedVideo", "GenerationSettings", "VideoPipeline", "decode_latents", "encode_prompts",
           "frames_from_video", "load_pipeline", "load_vae"]


class VideoPipeline:
    def __init__(
        self,
        name: str,
        dits: dict[str, WanDiT | Experts[WanDiT]],
        latent_space: LatentSpace,
        text_encoder: TextEncoder | None = None,
        autoencoder: VideoAutoencoder | None = None,
        defaults: ModelDefaults | None = None,
        device: torch.device | str = "cpu",
        offload_device: torch.device | str | None = None,
        loras: tuple[tuple[str, float], ...] = (),
        lora_targets: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        if not dits:
            raise AliceError(f"model {name!r} has no DiT weights")
        self.name = name
        self.dits = dits
        self.latent_space = latent_space
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.defaults = defaults or ModelDefaults()
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.loras = loras
        self.lora_targets = lora_targets  # per LoRA, the samplers whose network it changed
        self.image_encoder = None  # Wan2.1 I2V: the CLIP vision encoder (models/clip_vision.py)
        # two 14B experts: the one in use on the device, the other waiting in CPU memory
        self.swaps = {sampler: ExpertSwap(pair, self.device) for sampler, pair in dits.items() if isinstance(pair, Experts)}

    def replace(self, **changes) -> "VideoPipeline":
        """A pipeline sharing this one's parts except `changes` (e.g. other DiTs)."""
        parts = {k: getattr(self, k) for k in ("name", "dits", "latent_space", "text_encoder", "autoencoder",
                                                "defaults", "device", "offload_device", "loras", "lora_targets")}
        pipe = VideoPipeline(**{**parts, **changes})
        pipe.image_encoder = self.image_encoder  # a LoRA copy of a Wan2.1 I2V model keeps its CLIP encoder
        return pipe

    # -- settings -----------------------------------------------------------------------------------------------
    def size_multiples(self, sampler: str | None = None) -> tuple[int, int]:
        """(width, height) must be multiples of these: the latent stride times the DiT's patch size (of `sampler`'s
        network, or of every network the model has)."""
        dits = [self.dits[sampler]] if sampler else list(self.dits.values())
        stride = self.latent_space.spatial_stride
        return (max(stride * dit_config(dit).patch_size[2] for dit in dits),
                max(stride * dit_config(dit).patch_size[1] for dit in dits))

    def nearest_frames(self, frames: int) -> int:
        ts = self.latent_space.temporal_stride
        return max(1, round((frames - 1) / ts)) * ts + 1

    def resolve(self, s: GenerationSettings) -> GenerationSettings:
        """Fill the model's defaults and validate, with errors that name the fix."""
        d = self.defaults
        if not s.prompt or not s.prompt.strip():
            raise AliceError("the prompt is empty; describe the video, e.g. \"a red ball bouncing\"")
        check_prompt_text(s.prompt, "the prompt")
        check_prompt_text(s.negative_prompt, "the negative prompt")
        sampler = s.sampler or d.sampler_for(self.dits)
        if sampler not in SAMPLERS:
            raise AliceError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if sampler not in self.dits:
            raise AliceError(
                f"model {self.name!r} has no weights for the {sampler!r} sampler; use --sampler {' or '.join(self.dits)}"
            )

        def pick(value, default):
            return value if value is not None else default

        r = dataclasses.replace(
            s, sampler=sampler, negative_prompt=pick(s.negative_prompt, d.negative_prompt),
            steps=pick(s.steps, d.steps(sampler)), width=pick(s.width, d.width), height=pick(s.height, d.height),
            frames=pick(s.frames, d.frames), fps=pick(s.fps, d.fps), sigma_max=pick(s.sigma_max, d.sigma_max),
            guidance=pick(s.guidance, d.guidance), shift=pick(s.shift, d.shift),
        )
        check_finite(r.guidance, "--guidance")
        check_finite(r.shift, "--shift", positive=True)
        check_finite(r.sigma_max, "--sigma-max", positive=True)
        r = self._resolve_experts_and_image(r)
        max_steps = RCM_MAX_STEPS if r.sampler == "rcm" else MAX_TEACHER_STEPS
        if not 1 <= r.steps <= max_steps:
            raise AliceError(f"steps must be 1..{max_steps} for the {r.sampler} sampler, got {r.steps}")
        ts = self.latent_space.temporal_stride
        if r.frames < 1 or (r.frames - 1) % ts:
            raise AliceError(f"frames must be {ts}k+1 (e.g. {4 * ts + 1}), got {r.frames}; use --frames {self.nearest_frames(r.frames)}")
        multiples = dict(zip(("width", "height"), self.size_multiples(r.sampler)))
        for label, value in (("width", r.width), ("height", r.height)):
            multiple = multiples[label]
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
            preset = self.defaults.boundary if self.defaults.boundary is not None else dit.boundary
            r = dataclasses.replace(r, boundary=preset if r.boundary is None else r.boundary)
            Experts(None, None, r.boundary)  # validates: one line naming the range
        elif r.boundary is not None:
            raise AliceError(f"--boundary is for two-expert (Wan2.2 A14B) models; {self.name!r} has one DiT: drop --boundary")
        use = start_image_use(cfg, self.latent_space)
        if use == "needed" and r.image is None:
            raise AliceError(f"{self.name!r} is an image-to-video model: pass a start image (--image START.png)")
        if use == "none" and r.image is not None:
            raise AliceError(f"{self.name!r} is a text-to-video model: it takes no start image; drop --image")
        if cfg.out_dim != self.latent_space.latent_channels:
            raise AliceError(
                f"{self.name!r} makes {cfg.out_dim}-channel latents but the VAE has {self.latent_space.latent_channels}; "
                f"use the {'Wan2.2 VAE (z_dim 48)' if cfg.out_dim == 48 else 'Wan2.1 VAE (z_dim 16)'} (--vae)"
            )
        return r

    def check_memory(
        self, s: GenerationSettings, decode: bool = True, words: tuple[str, str, str] = CLI_WORDS
    ) -> dict[str, int]:
        """Refuse, naming what to lower, resolved settings whose sampling (and decoding) would not fit in the
        device's free memory; the weights are already loaded, so only what the run adds is counted."""
        ls, dit = self.latent_space, self.dits[s.sampler]
        wan_vae = isinstance(self.autoencoder, WanVAE) or (self.autoencoder is None and ls.name.startswith("Wan"))
        shape = GenerationShape(dit=dit_config(dit), dit_count=0, other_weight_bytes=0, temporal_stride=ls.temporal_stride,
                                spatial_stride=ls.spatial_stride, wan_vae=wan_vae)
        precision = "fp32" if (dit.high if isinstance(dit, Experts) else dit).dtype == torch.float32 else "bf16"
        return check_generation_memory(shape, precision, s.width, s.height, s.frames, self.device, decode, words)

    def latent_shape(self, s: GenerationSettings) -> tuple[int, int, int, int, int]:
        ls = self.latent_space
        return (1, ls.latent_channels, 1 + (s.frames - 1) // ls.temporal_stride, s.height // ls.spatial_stride,
                s.width // ls.spatial_stride)

    # -- the stages ----------------------------------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative_prompt: str | None = "") -> Conditioning:
        if self.text_encoder is None:
            raise AliceError(f"model {self.name!r} was loaded without its text encoder; encode the prompts with one")
        return encode_prompts(self.text_encoder, prompt, negative_prompt)

    @contextmanager
    def placed(self) -> Iterator[None]:
        """The DiTs on the compute device for the duration; back to the offload device afterwards."""
        # pairs move by ExpertSwap; a block-swapped DiT places itself, block by block
        single = [dit for dit in self.dits.values()
                  if not isinstance(dit, Experts) and getattr(dit, "block_swap", None) is None]
        for dit in single:
            dit.to(self.device)
        try:
            yield
        finally:
            if self.offload_device is not None:
                for dit in single:
                    dit.to(self.offload_device)

    def sample(
        self,
        settings: GenerationSettings,
        conditioning: Conditioning,
        latents: torch.Tensor | None = None,
        progress: ProgressFn | None = None,
        should_cancel: Callable[[], bool] | None = None,
        condition: ImageCondition | None = None,
        memory_words: tuple[str, str, str] | None = None,
    ) -> torch.Tensor:
        """Normalised latents [1, C, F, H, W] for `settings` (the prompt texts come from `conditioning`).

        `latents`: the starting noise (as diffusers' `latents=`); by default it is drawn from the seed. `condition`:
        what a start image gives the DiT (see `image_condition`). `memory_words`: check
        the memory sampling needs first, refusing in the host's words (limits.NODE_WORDS, ...)."""
        if settings.sampler is not None and settings.sampler not in self.dits:
            other = " or ".join(f"the {s} sampler" for s in self.dits)
            raise AliceError(f"model {self.name!r} has no weights for the {settings.sampler} sampler; use {other}")
        if memory_words is not None:
            resolved = self.resolve(dataclasses.replace(settings, prompt=conditioning.prompt,
                                                        negative_prompt=conditioning.negative_prompt))
            self.check_memory(resolved, decode=False, words=memory_words)
        return self._sample(settings, conditioning, latents, StepControl(progress=progress, should_cancel=should_cancel),
                            condition)

    def _sample(self, settings: GenerationSettings, conditioning: Conditioning, latents: torch.Tensor | None,
                control: StepControl, condition: ImageCondition | None) -> torch.Tensor:
        condition = condition or ImageCondition()
        y, clip, first_frame = condition.y, condition.clip, condition.first_frame
        s = self.resolve(dataclasses.replace(settings, prompt=conditioning.prompt,
                                             negative_prompt=conditioning.negative_prompt))
        shape = self.latent_shape(s)
        if latents is not None and tuple(latents.shape) != shape:
            raise AliceError(f"start latents have shape {tuple(latents.shape)}; these settings need {shape}")
        guided = s.sampler == "teacher" and s.guidance != 1.0
        if guided and conditioning.negative is None:
            raise AliceError("the teacher's guidance needs the negative prompt encoded; encode it too, or use guidance 1")
        dits = self.dits[s.sampler]
        if isinstance(dits, Experts):
            dits = Experts(dits.high, dits.low, s.boundary)
        dtype = (dits.high if isinstance(dits, Experts) else dits).dtype
        if dtype in (torch.bfloat16, torch.float16):
            control.timestep_dtype = dtype
        swap = self.swaps.get(s.sampler)
        positive = conditioning.positive.to(self.device)
        cond = velocities(dits, positive, y, clip, swap=swap, first_frame=first_frame)
        generator = torch.Generator().manual_seed(s.seed)
        with self.placed():
            if s.sampler == "rcm":
                result = sample_rcm(cond, shape, generator, s.steps, s.sigma_max, s.ode, self.device, control,
                                    noise=latents)
            else:
                uncond = velocities(dits, conditioning.negative.to(self.device), y, clip, swap=swap,
                                    first_frame=first_frame) if guided else None
                result = sample_flow_matching(cond, uncond, shape, generator, s.steps, s.guidance, s.shift,
                                              self.device, control, noise=latents)
        return result if first_frame is None else first_frame.apply(result)

    def start_image_use(self, sampler: str | None = None) -> str:
        """How the model (its `sampler`'s network, by default the default sampler's) takes a start image: see
        `start_image_use`."""
        sampler = sampler or self.defaults.sampler_for(self.dits)
        dit = self.dits.get(sampler) or next(iter(self.dits.values()))
        return start_image_use(dit_config(dit), self.latent_space)

    def image_condition(self, s: GenerationSettings, image: np.ndarray | torch.Tensor | None) -> ImageCondition | None:
        """What the start image gives the DiT (see `conditioning.py`); None for text-to-video."""
        if image is None:
            if start_image_use(dit_config(self.dits[s.sampler]), self.latent_space) == "needed":
                raise AliceError(f"{self.name!r} is an image-to-video model: pass a start image (--image START.png)")
            return None
        if self.autoencoder is None:
            raise AliceError(f"model {self.name!r} was loaded without its autoencoder; a start image needs it")
        return start_image_condition(self.name, dit_config(self.dits[s.sampler]), self.autoencoder,
                                     self.image_encoder, image, s.width, s.height, s.frames, self.device)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents [1, C, F, H, W] -> frames uint8 [F, H, W, 3]."""
        if self.autoencoder is None:
            raise AliceError(f"model {self.name!r} was loaded without its autoencoder; decode with a VAE")
        return frames_from_video(decode_latents(self.autoencoder, latents))[0]

    # -- the whole path --------------------------------------------------------------------------------------------
    def __call__(
        self,
        settings: GenerationSettings,
        conditioning: Conditioning | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "video",
        progress: ProgressFn | None = None,
        should_cancel: Callable[[], bool] | None = None,
        image: np.ndarray | torch.Tensor | None = None,
    ) -> GeneratedVideo:
        """Encode (unless `conditioning` is given), sample (from `latents` if given) and, for output_type "video",
        decode. output_type "latent" stops after sampling (`.frames` is None, `.latents` holds the result).
        `image` is the start picture of an image-to-video model (uint8 [H, W, 3])."""
        if output_type not in ("video", "latent"):
            raise AliceError(f"output_type must be 'video' or 'latent', got {output_type!r}")
        if image is not None and settings.image is None:
            settings = dataclasses.replace(settings, image="image")
        s = self.resolve(settings)
        self.check_memory(s)
        timings = {}
        start = time.perf_counter()
        if conditioning is None:
            guided = s.sampler == "teacher" and s.guidance != 1.0
            conditioning = self.encode_prompts(s.prompt, s.negative_prompt if guided else None)
        timings["text_encoding"] = time.perf_counter() - start

        start = time.perf_counter()
        condition = self.image_condition(s, image)
        if condition is not None:
            timings["image_encoding"] = time.perf_counter() - start

        start = time.perf_counter()
        control = StepControl(progress=progress, should_cancel=should_cancel)
        result = self._sample(s, conditioning, latents, control, condition)
        timings["sampling"] = time.perf_counter() - start

        frames = None
        if output_type == "video":
            start = time.perf_counter()
            frames = self.decode(result)
            timings["decoding"] = time.perf_counter() - start
        resolved = dataclasses.replace(s, prompt=conditioning.prompt, negative_prompt=conditioning.negative_prompt)
        used = tuple(lora for lora, targets in zip(self.loras, self.lora_targets) if s.sampler in targets)
        return GeneratedVideo(frames, resolved, self.name, timings, used, result, control.experts)

    def generate(self, settings: GenerationSettings, progress: ProgressFn | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 image: np.ndarray | torch.Tensor | None = None) -> GeneratedVideo:
        return self(settings, progress=progress, should_cancel=should_cancel, image=image)

    def save(self, video: GeneratedVideo, path: str | Path, crf: int = 19) -> Path:
        """The video file, with its settings, model and LoRAs in the metadata (never over an existing file)."""
        from .video_io import write_video

        if video.frames is None:
            raise AliceError("this result holds latents only (output_type='latent'); decode them before saving")
        return write_video(video.frames, path, fps=video.settings.fps, metadata=video.metadata(), crf=crf)

    # -- LoRAs ---------------------------------------------------------------------------------------------------
    def with_lora(self, lora: str | Path, strength: float = 1.0, copy: bool = True, on_report=None) -> "VideoPipeline":
        """A new pipeline with the LoRA applied to copies of the networks it is for (this one stays unchanged:
        hosts keep using it; copy=False patches in place, for a caller that drops this pipeline); the videos it
        makes record the LoRA. See `loading.lora.with_lora`."""
        from .loading.lora import lora_samplers, with_lora

        dits = with_lora(self.dits, lora, strength, copy=copy, on_report=on_report, model_name=repr(self.name))
        changed = tuple(lora_samplers(lora, list(self.dits)))
        return self.replace(dits=dits, loras=(*self.loras, (Path(lora).name, float(strength))),
                            lora_targets=(*self.lora_targets, changed))


# -- loading --------------------------------------------------------------------------------------------------------
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
) -> VideoPipeline:
    """A pipeline for a bundled model name, a bundle folder (or its model.json), a single Wan DiT checkpoint
    (+ `vae` and `text_encoder`, which also override a bundle's), or a Wan2.2 expert pair: an official / diffusers
    pipeline folder, or `model` (high noise) + `low_noise_model`. `parts` leaves out what a host loads on its own
    (a node graph loads only the DiTs here). precision: a name of loading/precision.py, "auto" included.
    `defaults` are a single checkpoint's preset (a catalogue model's steps, sigma_max, boundary, size, ...).
    runtime: the DiT's attention kernel, block swap and compile (single DiTs; an expert pair keeps its own swap).
    clip_vision: the CLIP image encoder a Wan2.1 I2V model needs."""
    from .loading.precision import compute_dtype, resolve_precision
    from .loading.text_encoders import load_text_encoder
    from .loading.vae import load_autoencoder, load_wan_vae

    device = torch.device(device)
    precision = resolve_precision(precision, device)
    dtype = compute_dtype(precision)
    bundle = resolve_bundle(model) if low_noise_model is None else None
    if bundle is not None:
        name, defaults, space = bundle.name, bundle.defaults, latent_space_for(bundle.autoencoder)
        dits = _load_bundle_dits(bundle.dits, precision, device, offload_device, runtime)
        encoder_source = text_encoder or bundle.text_encoder_source
    else:
        from .loading.experts import find_expert_pair
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
            defaults = ModelDefaults.from_dict(defaults or {}, f"{model}: defaults")
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


def start_image_use(cfg, space: LatentSpace) -> str:
    """'needed' (image-to-video: y beside the noise, in_dim > out_dim), 'optional' (Wan2.2 TI2V-5B on the Wan2.2
    VAE's latents: the image as the first latent frame) or 'none' (text-to-video) for a DiT of architecture `cfg`
    sampling in `space` (alice-tiny's 48-channel space-to-depth latent is no TI2V)."""
    if cfg.in_dim > cfg.out_dim:
        return "needed"
    return "optional" if cfg.out_dim == TI2V_CHANNELS and space.name.startswith("Wan") else "none"


def start_image_condition(name: str, cfg, autoencoder: VideoAutoencoder, image_encoder,
                          image: np.ndarray | torch.Tensor, width: int, height: int, frames: int,
                          device: torch.device | str = "cpu") -> ImageCondition:
    """What `image` (uint8 [H, W, 3] or float [3, H, W] in [-1, 1]), fitted to width x height, gives a DiT of
    architecture `cfg` for a video of `frames` frames: TI2V's first frame, or y (+ CLIP tokens for Wan2.1 I2V)."""
    from .conditioning import FirstFrame, fit_image, image_condition

    start = fit_image(image, width, height).to(device)
    if cfg.in_dim == cfg.out_dim:
        return ImageCondition(first_frame=FirstFrame.encode(autoencoder, start))
    if cfg.image_dim is not None:
        check_image_encoder(name, cfg.image_dim, image_encoder)
    clip = image_encoder.encode(start) if cfg.image_dim is not None else None
    return ImageCondition(y=image_condition(autoencoder, start, frames), clip=clip)


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


def load_vae(source: str | Path, precision: str = "fp32", device: str | torch.device = "cpu") -> VideoAutoencoder:
    """A bundled model's autoencoder (by name, bundle folder or its model.json) or a Wan2.1 VAE file."""
    from .loading.precision import compute_dtype, resolve_precision
    from .loading.vae import load_autoencoder, load_wan_vae

    dtype = compute_dtype(resolve_precision(precision, device))
    bundle = resolve_bundle(source)
    autoencoder = load_autoencoder(bundle.autoencoder, bundle.folder, dtype) if bundle else load_wan_vae(source, dtype)
    return autoencoder.to(device) if isinstance(autoencoder, torch.nn.Module) else autoencoder
