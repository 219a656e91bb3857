"""Which models the app offers, a cache of loaded pipelines, the size/frame presets each model allows, and the start
image and CLIP vision encoder it takes.

The UI only ever sends a model *label* back; the label is looked up in the list built here on the server, so a
user can never make the app read a path of their choosing. Three sources: bundled models, model bundles found
in the allow-listed models folder (ALICE_MODELS_DIR, default ~/.cache/alice/models), and the download catalogue
of `alice_core.hub` when that module exists (downloads happen only on an explicit request).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from alice_core.bundle import bundled_models
from alice_core.errors import AliceError
from alice_core.loading.precision import check_precision
from alice_core.models.clip_vision import ClipImageEncoder
from alice_core.models.runtime import DiTRuntime
from alice_core.generation import dit_config
from alice_core.pipeline import VideoPipeline, load_pipeline
from alice_core.sampling import Experts

MODELS_DIR_ENV = "ALICE_MODELS_DIR"
CLIP_VISION_FOLDER = "clip_vision"
CLIP_VISION_SUFFIXES = (".safetensors", ".pth", ".pt")  # what load_clip_vision reads as a single file
GUIDANCE_RANGE = (1.0, 30.0)  # as the ComfyUI Teacher Sampler's cfg; 1 turns guidance off
GUIDANCE_LABEL = {False: "Teacher guidance", True: "Teacher guidance, high-noise expert"}  # by has_two_experts
GUIDANCE_LOW_LABEL = "Teacher guidance, low-noise expert"
LOCAL_PREFIX = "local/"
HUB_PREFIX = "hub/"


def default_models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or "~/.cache/alice/models").expanduser()


@dataclass(frozen=True)
class ModelChoice:
    label: str                  # what the UI shows and sends back
    kind: str                   # "bundled", "local" or "catalogue"
    name: str
    source: str | None          # what load_pipeline gets (bundled name, bundle folder, DiT file); None: not downloaded
    description: str = ""
    vae: str | None = None      # catalogue models: the Wan VAE and text encoder beside the DiT file
    text_encoder: str | None = None
    low_noise_model: str | None = None  # a catalogue Wan2.2 pair's low-noise expert
    defaults: dict | None = None        # a catalogue model's preset (steps, sigma_max, boundary, size, ...)
    clip_vision: str | None = None      # a catalogue Wan2.1 I2V model's CLIP vision file name (the list's default)
    lora: str | None = None             # a catalogue model's own LoRA (lightx2v), applied on load

    @property
    def available(self) -> bool:
        return self.source is not None


def _local_bundles(models_dir: Path) -> dict[str, Path]:
    """Bundle folders (with model.json) directly inside the models folder, by folder name."""
    if not models_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(models_dir.iterdir()) if (p / "model.json").is_file()}


def _catalogue_choice(model) -> ModelChoice:
    """A catalogue model as a choice; available when all its files are on disk (checked locally, no network)."""
    from alice_core.hub import resolve_catalogue_model

    try:
        paths = resolve_catalogue_model(model.name, download=False)
    except AliceError:
        return ModelChoice(HUB_PREFIX + model.name, "catalogue", model.name, None, model.description)
    low = str(paths["dit_low"]) if "dit_low" in paths else None
    clip = paths["clip_vision"].name if "clip_vision" in paths else None
    lora = str(paths["lora"]) if "lora" in paths else None
    return ModelChoice(HUB_PREFIX + model.name, "catalogue", model.name, str(paths["dit"]), model.description,
                       str(paths["vae"]), str(paths["text_encoder"]), low, model.defaults, clip, lora)


def clip_vision_files(models_dir: Path) -> dict[str, Path]:
    """The CLIP vision files the app may load (Wan2.1 I2V), by file name: those in the models folder's
    clip_vision/, then those `alice download` placed ($ALICE_HOME/clip_vision); the first of a name wins."""
    from alice_core.hub import standalone_folders

    files: dict[str, Path] = {}
    for folder in (models_dir / CLIP_VISION_FOLDER, *standalone_folders()[CLIP_VISION_FOLDER]):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix in CLIP_VISION_SUFFIXES and not path.name.startswith("."):
                    files.setdefault(path.name, path)
    return files


class ImageEncoderCache:
    """The CLIP vision encoder last used, kept loaded by file (one at a time: ViT-H is 1.26 GB)."""

    def __init__(self) -> None:
        self._loaded: tuple[tuple[Path, int], ClipImageEncoder] | None = None
        self._lock = threading.Lock()

    def get(self, path: Path) -> ClipImageEncoder:
        from alice_core.loading.clip_vision import load_clip_vision

        key = (path, path.stat().st_mtime_ns)
        with self._lock:
            if self._loaded is None or self._loaded[0] != key:
                self._loaded = None  # free the previous one first
                self._loaded = (key, load_clip_vision(path))
            return self._loaded[1]


def list_model_choices(models_dir: Path, extra: dict[str, Path] | None = None) -> list[ModelChoice]:
    """Bundled models first, then local bundles, then catalogue entries (usable once downloaded).

    `extra` holds bundle folders the operator named on the command line (label -> folder).
    """
    choices = [ModelChoice(name, "bundled", name, name) for name in bundled_models()]
    for label, folder in (extra or {}).items():
        choices.append(ModelChoice(label, "local", folder.name, str(folder)))
    local = _local_bundles(models_dir)
    choices += [ModelChoice(LOCAL_PREFIX + name, "local", name, str(folder)) for name, folder in local.items()]
    from alice_core.hub import load_catalogue

    # ComfyUI-only entries (fp8 single-file umT5) cannot be loaded by the app's pipeline.
    choices += [_catalogue_choice(m) for m in load_catalogue().models.values() if not m.comfyui_only]
    return choices


def download_model(choice: ModelChoice, progress=None) -> Path:
    """Fetch a catalogue model into Alice's download folders (only ever called from the Download button).

    progress(label, bytes_done, bytes_total) is alice_core.hub's callback (the app passes gr.Progress through it)."""
    from alice_core.hub import resolve_catalogue_model

    if choice.kind != "catalogue":
        raise AliceError(f"{choice.label} is not a catalogue entry; only hub/... models can be downloaded")
    return resolve_catalogue_model(choice.name, download=True, progress=progress)["dit"]


class PipelineCache:
    """Loaded pipelines keyed by (model source, its own LoRA, precision); keeps the most recently used few in memory."""

    def __init__(self, device: str, max_items: int = 2, runtime: DiTRuntime = DiTRuntime()) -> None:
        self.device = device
        self.max_items = max_items
        self.runtime = runtime  # the DiT's attention kernel, block swap and compile (app launch settings)
        self._pipes: OrderedDict[tuple[str, str], VideoPipeline] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, choice: ModelChoice, precision: str) -> VideoPipeline:
        if not choice.available:
            raise AliceError(f"model {choice.label} is not downloaded yet; click Download first")
        check_precision(precision)
        key = (choice.source, choice.lora, precision)
        with self._lock:  # also stops two sessions from loading the same weights twice
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            while len(self._pipes) >= self.max_items:
                self._pipes.popitem(last=False)
            pipe = load_pipeline(choice.source, precision=precision, vae=choice.vae, text_encoder=choice.text_encoder,
                                 device=self.device, low_noise_model=choice.low_noise_model,
                                 defaults=choice.defaults, runtime=self.runtime)
            if choice.lora:  # in place: the cached pipeline is this model's (LoRAs the user picks go on copies)
                pipe = pipe.with_lora(choice.lora, copy=False)
            self._pipes[key] = pipe
            return pipe


# -- presets --------------------------------------------------------------------------------------------------------
def default_size(pipe: VideoPipeline) -> tuple[int, int]:
    return pipe.defaults.width, pipe.defaults.height


def size_presets(pipe: VideoPipeline) -> list[str]:
    """The model's default size, half of it, and the 2:1 landscape / 1:2 portrait variants, as "WxH"."""
    mult_w, mult_h = pipe.size_multiples()
    width, height = default_size(pipe)
    candidates = [(width, height), (width // 2, height // 2), (width * 2, height), (width, height * 2)]
    presets = []
    for w, h in candidates:
        if w >= mult_w and h >= mult_h and not w % mult_w and not h % mult_h and f"{w}x{h}" not in presets:
            presets.append(f"{w}x{h}")
    return presets


def default_frames(pipe: VideoPipeline) -> int:
    return pipe.defaults.frames


def frame_presets(pipe: VideoPipeline) -> list[int]:
    """4k+1 frame counts (k per the autoencoder's temporal stride): shortest, half, default, double."""
    stride = pipe.latent_space.temporal_stride
    default = default_frames(pipe)
    half = max(1, round((default - 1) / 2 / stride)) * stride + 1
    return sorted({stride + 1, half, default, 2 * (default - 1) + 1})


def parse_size(text: str, pipe: VideoPipeline) -> tuple[int, int]:
    """"WxH" -> (W, H), checked against the model so the message names a valid preset."""
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise AliceError(f"size must look like WIDTHxHEIGHT, e.g. {size_presets(pipe)[0]}; got {text!r}")
    width, height = int(parts[0]), int(parts[1])
    mult_w, mult_h = pipe.size_multiples()
    max_w, max_h = (2 * d for d in default_size(pipe))
    if width < mult_w or height < mult_h or width % mult_w or height % mult_h:
        raise AliceError(
            f"size {width}x{height} does not fit model {pipe.name}: width must be a multiple of {mult_w} and "
            f"height a multiple of {mult_h}; pick a preset such as {', '.join(size_presets(pipe))}"
        )
    if width > max_w or height > max_h:  # a shared app should not let one request take the machine for hours
        raise AliceError(
            f"size {width}x{height} is larger than this app allows for {pipe.name} (at most {max_w}x{max_h})"
        )
    return width, height


def parse_frames(value: int | str, pipe: VideoPipeline) -> int:
    stride = pipe.latent_space.temporal_stride
    try:
        frames = int(value)
    except (TypeError, ValueError):
        frames = -1
    if frames < 1 or (frames - 1) % stride or frames > max(frame_presets(pipe)):
        raise AliceError(
            f"frames must be {stride}k+1 and at most {max(frame_presets(pipe))} for model {pipe.name}, got {value!r}; "
            f"pick one of {', '.join(map(str, frame_presets(pipe)))}"
        )
    return frames


# -- what a model takes -----------------------------------------------------------------------------------------
def check_start_image(pipe: VideoPipeline, sampler: str | None, image_given: bool, clip_vision: str) -> None:
    """The start image as the model takes it, in the app's words: needed (image-to-video), refused (text-to-video),
    and a Wan2.1 I2V model's CLIP vision encoder chosen."""
    use = pipe.start_image_use(sampler)
    if use == "needed" and not image_given:
        raise AliceError(f"{pipe.name} is an image-to-video model: upload a start image (Start image, under the "
                         "prompt)")
    if use == "none" and image_given:
        raise AliceError(f"{pipe.name} is a text-to-video model and takes no start image; remove the picture from "
                         "Start image")
    if use == "needed" and not clip_vision and needs_clip_vision(pipe, sampler):
        raise AliceError(f"{pipe.name} is a Wan2.1 image-to-video model and needs the CLIP vision encoder: choose it "
                         "in CLIP vision (under Start image); if the list is empty, put clip_vision_h.safetensors in "
                         "the clip_vision folder (alice download clip-vision-h-comfy)")


def needs_clip_vision(pipe: VideoPipeline, sampler: str | None = None) -> bool:
    sampler = sampler or pipe.defaults.sampler_for(pipe.dits)
    return dit_config(pipe.dits.get(sampler) or next(iter(pipe.dits.values()))).image_dim is not None


def has_two_experts(pipe: VideoPipeline) -> bool:
    """Whether the teacher is a Wan2.2 A14B pair (a high- and a low-noise DiT), each with its own guidance."""
    return isinstance(pipe.dits.get("teacher"), Experts)


def check_guidance(pipe: VideoPipeline, guidance: float | None, guidance_low: float | None) -> None:
    """The teacher's guidance fields in the app's words (None: the model's preset): numbers in GUIDANCE_RANGE, and
    the low-noise expert's only for a two-expert model."""
    low, high = GUIDANCE_RANGE
    pair = has_two_experts(pipe)
    if guidance_low is not None and not pair:
        raise AliceError(f"{GUIDANCE_LOW_LABEL} is for two-expert (Wan2.2 A14B) models; {pipe.name} has one DiT: "
                         "leave it empty")
    for label, value in ((GUIDANCE_LABEL[pair], guidance), (GUIDANCE_LOW_LABEL, guidance_low)):
        if value is not None and not low <= value <= high:  # NaN fails the comparison too
            raise AliceError(f"{label} must be a number from {low:g} to {high:g}, got {value!r}")
