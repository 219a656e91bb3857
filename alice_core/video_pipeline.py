"""A pipeline's generation, in one call or in stages: prompt -> text embeddings -> latents -> frames -> file.

`VideoPipeline` is used whole by the CLI and the app (`pipe(settings)` or `pipe.generate(settings)`) and in stages
by node graphs, like diffusers' pipelines with `prompt_embeds` / `latents` / `output_type="latent"`:

    conditioning = encode_prompts(text_encoder, prompt, negative)   # or pipe.encode_prompts(...)
    latents = pipe.sample(settings, conditioning, latents=None)     # normalised latents [1, C, F, H, W]
    frames = pipe.decode(latents)                                   # uint8 [F, H, W, 3]
    pipe.save(GeneratedVideo(...), path)                            # records prompt, settings and LoRAs

A pipeline may hold only its DiT(s) (a node graph loads the text encoder and the VAE separately): sampling needs
only the latent geometry (`LatentSpace`). Host formats (ComfyUI's LATENT / IMAGE) are the hosts' business (nodes/).
Built from files by `alice_core.pipeline.load_pipeline`, the front door.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .bundle import SAMPLERS, ModelDefaults
from .conditioning import ImageCondition, start_image_condition, start_image_use
from .errors import AliceError
from .expert_swap import ExpertSwap, velocities
from .limits import CLI_WORDS, GenerationShape, check_bounds, check_finite, check_generation_memory, check_prompt_text
from .generation import (
    Conditioning, GeneratedVideo, GenerationSettings, decode_latents, dit_config, encode_prompts, frames_from_video,
)
from .models.dit import WanDiT
from .models.interfaces import TextEncoder, VideoAutoencoder
from .models.latent_space import LatentSpace
from .models.vae import WanVAE
from .sampling import RCM_MAX_STEPS, Experts, ProgressFn, StepControl, sample_flow_matching, sample_rcm

MAX_TEACHER_STEPS = 1000


def teacher_guided(s: GenerationSettings) -> bool:
    """Whether resolved settings run the teacher's guidance (on either expert), which needs the negative prompt."""
    return s.sampler == "teacher" and (s.guidance != 1.0 or s.guidance_low not in (None, 1.0))


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
        r = self._resolve_experts_and_image(r, guidance_given=s.guidance is not None)
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

    def _resolve_experts_and_image(self, r: GenerationSettings, guidance_given: bool) -> GenerationSettings:
        dit = self.dits[r.sampler]
        cfg = dit_config(dit)
        if isinstance(dit, Experts):
            preset = self.defaults.boundary if self.defaults.boundary is not None else dit.boundary
            r = dataclasses.replace(r, boundary=preset if r.boundary is None else r.boundary)
            Experts(None, None, r.boundary)  # validates: one line naming the range
            # one --guidance value guides both experts; none: the preset's pair of values (Wan2.2 T2V-A14B: 4, 3)
            low = r.guidance_low if r.guidance_low is not None else None if guidance_given else self.defaults.guidance_low
            r = dataclasses.replace(r, guidance_low=low if low is not None else r.guidance)
            check_finite(r.guidance_low, "--guidance")
        elif r.boundary is not None:
            raise AliceError(f"--boundary is for two-expert (Wan2.2 A14B) models; {self.name!r} has one DiT: drop --boundary")
        elif r.guidance_low is not None:
            raise AliceError(f"a second --guidance value (HIGH,LOW) is for two-expert (Wan2.2 A14B) models; "
                             f"{self.name!r} has one DiT: use --guidance {r.guidance:g}")
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
        guided = teacher_guided(s)
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
                guidance = s.guidance if s.guidance_low is None else Experts(s.guidance, s.guidance_low, s.boundary)
                result = sample_flow_matching(cond, uncond, shape, generator, s.steps, guidance, s.shift,
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
            guided = teacher_guided(s)
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
