"""What the app does, without any Gradio: pick a model by label, generate one video at a time (optionally with a
LoRA), save it; finetune a LoRA on uploaded clips.

Kept separate from the UI so the rules (allow-listed models and LoRAs, checked sizes, one job per device, files
written only into the app's output and LoRA folders) are plain Python and testable on their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alice_core.bundle import DEFAULT_MODEL
from alice_core.errors import AliceError
from alice_core.limits import APP_WORDS
from alice_core.models.runtime import DiTRuntime
from alice_core.pipeline import GeneratedVideo, GenerationSettings, VideoPipeline
from alice_core.preview import previewer_for
from alice_core.sampling import RCM_MAX_STEPS
from alice_core.train.clips import clips_from_files
from alice_core.train.finetune import FinetuneConfig, FinetuneProgress, FinetuneResult, lora_file_stem
from alice_core.train.finetune_job import (
    FinetuneOutputsExist, ForeignCheckpoint, finetune_lora_files, run_finetune_job, without_teacher_halves,
)
from alice_core.video_io import unique_path

from .models import (
    LOCAL_PREFIX, ImageEncoderCache, ModelChoice, PipelineCache, check_guidance, check_start_image, clip_vision_files,
    default_models_dir, download_model, list_model_choices, needs_clip_vision, parse_frames, parse_size,
)

MAX_TEACHER_STEPS_UI = 100  # the library allows more; the app keeps one request from holding the device for long
# progress(done, total, description)
StepProgress = Callable[[int, int, str], None]
# preview(image): each step's x0 estimate as uint8 [H, W, 3] (alice_core.preview)
StepPreview = Callable[[np.ndarray], None]
# Finetune limits for a shared app (the library allows more): one request must not hold the device for days.
MAX_FINETUNE_STEPS = 5000    # per stage
MAX_FINETUNE_CLIPS = 100
MAX_FINETUNE_RANK = 128
MAX_FINETUNE_BATCH = 32
LORA_SUFFIX = ".safetensors"
START_IMAGE_NAME = "uploaded start image"  # what the video's metadata records as its image
NETWORK_NAMES = {"rcm": "4-step student", "teacher": "teacher"}


@dataclass
class Job:
    """One request from the UI: every field is user input and is checked before any work."""

    model: str                  # a label from Studio.choices()
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    size: str = ""              # "WxH"; "" means the model's default
    frames: int | str | None = None
    fps: int | None = None
    sampler: str | None = None  # "rcm" or "teacher"; None means the model's default
    steps: int | None = None
    precision: str = "fp32"
    lora: str = ""              # a name from Studio.lora_names(); "" means none
    lora_strength: float = 1.0
    image: np.ndarray | None = None  # image-to-video: the uploaded start picture (uint8 [H, W, 3])
    clip_vision: str = ""       # Wan2.1 I2V: a name from Studio.clip_vision_names()
    guidance: float | None = None      # the teacher's CFG (a Wan2.2 A14B pair: the high-noise expert's); None: preset
    guidance_low: float | None = None  # a Wan2.2 A14B pair: the low-noise expert's CFG; None: the preset's


@dataclass
class FinetuneJob:
    """A finetune request from the UI: uploaded videos, their captions and the settings, all checked first."""

    model: str                  # a bundle label from Studio.finetune_choices()
    videos: list[str]           # the uploaded files (in Gradio's upload cache)
    captions: str               # one line for every clip, or one line per video in upload order
    lora_name: str              # the LoRA's file name in the app's LoRA folder
    config: FinetuneConfig
    restart: bool = False       # discard this name's checkpoint (and replace its LoRA) instead of resuming


@dataclass(frozen=True)
class StepHooks:
    """What a generation reports between steps, and how it learns it should stop."""

    progress: StepProgress | None = None
    should_cancel: Callable[[], bool] | None = None
    preview: StepPreview | None = None


@dataclass
class Result:
    path: Path
    video: GeneratedVideo
    wall_s: float               # the whole request: text encoding, sampling, decoding and writing the file
    lora: str = ""
    lora_strength: float = 1.0

    def summary(self) -> dict:
        """The settings shown next to the video (no server paths)."""
        info = dict(self.video.metadata())  # with the LoRA and its strength, as the file records them
        info.update(file=self.path.name, wall_time_s=round(self.wall_s, 2),
                    **{f"{k}_s": round(v, 3) for k, v in self.video.timings.items()})
        return info


class Studio:
    def __init__(
        self,
        output_dir: str | Path,
        device: str = "cpu",
        models_dir: str | Path | None = None,
        default_model: str | None = None,
        runtime: DiTRuntime = DiTRuntime(),
    ) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir = Path(models_dir).expanduser().resolve() if models_dir else default_models_dir()
        self.pipelines = PipelineCache(device, runtime=runtime)
        self.image_encoders = ImageEncoderCache()
        self._device_lock = threading.Lock()  # one job at a time on this device, whatever the queue does
        self.loras_dir = self.models_dir / "loras"  # inside the models folder: never served to the browser
        self._lora_pipe: tuple[tuple, VideoPipeline] | None = None  # the last LoRA-patched pipeline, reused
        self._extra: dict[str, Path] = {}
        self.default_label = self._default_label(default_model or DEFAULT_MODEL)

    # -- models ------------------------------------------------------------------------------------------------
    def _default_label(self, model: str) -> str:
        """The operator's --model: a label, a name in the models folder, or a bundle folder path."""
        labels = {c.label for c in self.choices()}
        for label in (model, LOCAL_PREFIX + model):
            if label in labels:
                return label
        folder = Path(model).expanduser()
        if (folder / "model.json").is_file():  # only the operator can add a path, never the UI
            label = folder.name if folder.name not in labels else str(folder.resolve())
            self._extra[label] = folder.resolve()
            return label
        raise AliceError(
            f"model {model!r} not found: pass a bundled model name, a model bundle folder, or the name of a bundle "
            f"in {self.models_dir} (set ALICE_MODELS_DIR to use another folder)"
        )

    def choices(self) -> list[ModelChoice]:
        return list_model_choices(self.models_dir, self._extra)

    def choice(self, label: str) -> ModelChoice:
        for choice in self.choices():
            if choice.label == label:
                return choice
        raise AliceError(
            f"unknown model {label!r}; pick one from the Model list (click ↻ to rescan the models folder)"
        )

    def pipeline(self, label: str, precision: str = "fp32") -> VideoPipeline:
        return self.pipelines.get(self.choice(label), precision)

    def download(self, label: str, progress=None) -> Path:
        """Fetch a catalogue model; progress(label, bytes_done, bytes_total) as alice_core.hub reports it."""
        return download_model(self.choice(label), progress)

    def clip_vision_names(self) -> list[str]:
        """The CLIP vision files the app offers (Wan2.1 I2V): see models.clip_vision_files."""
        return list(clip_vision_files(self.models_dir))

    def clip_vision_path(self, name: str) -> Path:
        files = clip_vision_files(self.models_dir)
        if name not in files:
            raise AliceError(f"unknown CLIP vision file {name!r}; pick one from the CLIP vision list (click ↻ after "
                             f"adding a file to the clip_vision folder)")
        return files[name]

    def busy(self) -> bool:
        return self._device_lock.locked()

    @contextlib.contextmanager
    def device_slot(self) -> Iterator[None]:
        """Hold the device: generations and finetunes run one at a time, whatever the web queue lets through."""
        with self._device_lock:
            yield

    # -- generation --------------------------------------------------------------------------------------------
    def settings(self, job: Job, pipe: VideoPipeline) -> GenerationSettings:
        """The job as checked pipeline settings (AliceError naming the fix when something is off)."""
        width, height = parse_size(job.size, pipe) if job.size else (None, None)
        frames = parse_frames(job.frames, pipe) if job.frames not in (None, "") else None
        sampler = job.sampler or None
        if sampler == "teacher" and job.steps is not None and not 1 <= job.steps <= MAX_TEACHER_STEPS_UI:
            raise AliceError(f"teacher steps must be 1..{MAX_TEACHER_STEPS_UI} in the app, got {job.steps}")
        if sampler == "rcm" and job.steps is not None and not 1 <= job.steps <= RCM_MAX_STEPS:
            raise AliceError(f"student steps must be 1..{RCM_MAX_STEPS}, got {job.steps}")
        check_start_image(pipe, sampler, job.image is not None, job.clip_vision)
        if job.image is not None and needs_clip_vision(pipe, sampler):
            self.clip_vision_path(job.clip_vision)  # a name from the list, checked before any work
        check_guidance(pipe, job.guidance, job.guidance_low)
        # guidance is the teacher's: a student's video records the preset it ignores, not the fields' values
        teacher = (sampler or pipe.defaults.sampler_for(pipe.dits)) == "teacher"
        settings = GenerationSettings(
            prompt=job.prompt, negative_prompt=job.negative_prompt or None, seed=int(job.seed), sampler=sampler,
            steps=job.steps, width=width, height=height, frames=frames, fps=job.fps,
            image=START_IMAGE_NAME if job.image is not None else None,
            guidance=job.guidance if teacher else None, guidance_low=job.guidance_low if teacher else None,
        )
        resolved = pipe.resolve(settings)
        pipe.check_memory(resolved, words=APP_WORDS)  # refused in the app's words before the job starts
        return resolved

    def generate(
        self,
        job: Job,
        progress: StepProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
        preview: StepPreview | None = None,
    ) -> Result:
        """One video for `job`; `preview`, when given, gets each step's preview image."""
        pipe = self.pipeline(job.model, job.precision)
        settings = self.settings(job, pipe)
        targets = self._lora_files(job, pipe)
        if targets and settings.sampler not in targets:
            have = next(iter(targets))
            raise AliceError(
                f"LoRA {job.lora} is for the {NETWORK_NAMES[have]} ({have}) and has no part for the "
                f"{NETWORK_NAMES[settings.sampler]}; generate with the {NETWORK_NAMES[have]}'s sampler"
            )
        with self.device_slot():
            return self._run(self._with_lora(pipe, job), settings, StepHooks(progress, should_cancel, preview),
                             settings.sampler, job)

    def compare(
        self,
        job: Job,
        student_steps: int,
        teacher_steps: int,
        progress: StepProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
        preview: StepPreview | None = None,
    ) -> tuple[Result, Result]:
        """The student and the teacher on the same prompt, seed and size, one after the other."""
        pipe = self.pipeline(job.model, job.precision)
        missing = [s for s in ("rcm", "teacher") if s not in pipe.dits]
        if missing:
            raise AliceError(
                f"teacher vs student needs a model with both a teacher and a 4-step student; {pipe.name} has only "
                f"the {' and '.join(pipe.dits)}"
            )
        student = self.settings(dataclasses.replace(job, sampler="rcm", steps=student_steps), pipe)
        teacher = self.settings(dataclasses.replace(job, sampler="teacher", steps=teacher_steps), pipe)
        total = student.steps + teacher.steps

        def offset(done_before: int, label: str) -> StepProgress | None:
            if progress is None:
                return None
            return lambda done, _total, _desc: progress(done_before + done, total, label)

        self._lora_files(job, pipe)  # a LoRA changes the networks it is for; any other stays the base model
        with self.device_slot():
            pipe = self._with_lora(pipe, job)
            first = self._run(pipe, student, StepHooks(offset(0, "student"), should_cancel, preview), "student", job)
            second = self._run(pipe, teacher, StepHooks(offset(student.steps, "teacher"), should_cancel, preview),
                               "teacher", job)
        return first, second

    def _run(
        self,
        pipe: VideoPipeline,
        settings: GenerationSettings,
        hooks: StepHooks,
        label: str,
        job: Job,
    ) -> Result:
        start = time.perf_counter()
        wanted = hooks.preview is not None and pipe.autoencoder is not None
        show = previewer_for(pipe.autoencoder) if wanted else None

        def report(done: int, total: int, x0) -> None:
            if hooks.progress is not None:
                hooks.progress(done, total, label)
            if show is not None:
                hooks.preview(show(x0))

        if job.image is not None and needs_clip_vision(pipe, settings.sampler):
            pipe.image_encoder = self.image_encoders.get(self.clip_vision_path(job.clip_vision))  # device held
        video = pipe.generate(settings, progress=report, should_cancel=hooks.should_cancel, image=job.image)
        path = pipe.save(video, unique_path(self.output_dir, "alice", ".mp4"))
        return Result(path, video, time.perf_counter() - start, job.lora, job.lora_strength)

    # -- LoRAs -------------------------------------------------------------------------------------------------
    def _files_in_lora_folder(self) -> list[str]:
        if not self.loras_dir.is_dir():
            return []
        return sorted(p.name for p in self.loras_dir.glob(f"*{LORA_SUFFIX}") if p.is_file() and p.name[0] != ".")

    def lora_names(self) -> list[str]:
        """The LoRAs the app offers: the .safetensors files directly in its LoRA folder, a finetune's pair (X and
        X.teacher) as one entry X, which the app applies to the right network itself."""
        return without_teacher_halves(self._files_in_lora_folder())

    def lora_path(self, name: str) -> Path:
        if name not in self.lora_names():
            raise AliceError(f"unknown LoRA {name!r}; pick one from the LoRA list (finetuned LoRAs appear there)")
        return self.loras_dir / name

    def _lora_files(self, job: Job, pipe: VideoPipeline) -> dict[str, Path]:
        """{sampler: LoRA file} for the networks the job's LoRA changes ({} without a LoRA): for a finetune, its
        student file on the 4-step student and its teacher file on the teacher; any other LoRA on every network."""
        return finetune_lora_files(self.lora_path(job.lora), list(pipe.dits)) if job.lora else {}

    def _with_lora(self, pipe: VideoPipeline, job: Job) -> VideoPipeline:
        """The pipeline with the job's LoRA on copies of the networks it is for (the cached pipeline stays
        unpatched); the last patched pipeline is kept, so repeated generations with one LoRA copy nothing."""
        if not job.lora:
            return pipe
        files = self._lora_files(job, pipe)
        key = (job.model, job.precision, job.lora, tuple((s, p.stat().st_mtime_ns) for s, p in files.items()),
               float(job.lora_strength))
        if self._lora_pipe is not None and self._lora_pipe[0] == key:
            return self._lora_pipe[1]
        self._lora_pipe = None  # free the previous copy before making the next
        result = pipe
        for path in dict.fromkeys(files.values()):  # a finetune's two files, each on its own network
            try:
                result = result.with_lora(path, float(job.lora_strength))
            except AliceError as exc:
                raise AliceError(f"LoRA {job.lora}: {str(exc).removeprefix(str(path) + ': ')}") from None
        self._lora_pipe = (key, result)
        return result

    # -- finetuning --------------------------------------------------------------------------------------------
    def finetune_choices(self) -> list[str]:
        """Labels of the models a LoRA can be trained for: model bundles (catalogue entries are single files)."""
        return [c.label for c in self.choices() if c.kind in ("bundled", "local")]

    def finetune(
        self,
        job: FinetuneJob,
        progress: FinetuneProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> FinetuneResult:
        """Train the job's LoRA into the LoRA folder. Raises FinetuneCancelled after checkpointing; the same job
        again resumes (the checkpoint folder is named after the LoRA)."""
        if job.model not in self.finetune_choices():
            raise AliceError(f"model {job.model!r} cannot be finetuned here; pick a model bundle from the list "
                             f"({', '.join(self.finetune_choices())})")
        stem = lora_file_stem(job.lora_name)
        cfg = job.config
        limits = (("teacher steps", cfg.teacher_steps, MAX_FINETUNE_STEPS),
                  ("student steps", cfg.student_steps, MAX_FINETUNE_STEPS), ("rank", cfg.rank, MAX_FINETUNE_RANK),
                  ("batch size", cfg.batch_size, MAX_FINETUNE_BATCH), ("videos", len(job.videos), MAX_FINETUNE_CLIPS))
        for name, value, most in limits:
            if value > most:
                raise AliceError(f"{name} is {value}; this app allows at most {most}")
        if cfg.teacher_steps + cfg.student_steps == 0:
            raise AliceError("Teacher steps and Student steps are both 0, so nothing would be trained; set at least "
                             "one of them above 0")
        if not job.videos:
            raise AliceError("no videos uploaded; add the clips to learn from")
        captions = _captions(job.captions, len(job.videos))
        clips = [clip for video, caption in zip(job.videos, captions) for clip in clips_from_files([video], caption)]

        out_file = self.loras_dir / f"{stem}{LORA_SUFFIX}"
        work = self.models_dir / "finetune-work" / stem
        out_file.parent.mkdir(parents=True, exist_ok=True)
        choice = self.choice(job.model)
        with self.device_slot():
            try:
                return run_finetune_job(choice.source, clips, cfg, out_file, work, restart=job.restart,
                                        device=str(self.pipelines.device), progress=progress,
                                        should_cancel=should_cancel)
            except FinetuneOutputsExist:
                raise AliceError(f"a LoRA named {out_file.name} exists; choose another name, or tick 'Start over' "
                                 "to train again and replace it") from None
            except ForeignCheckpoint:
                raise AliceError(f"LoRA name {stem!r} has an unfinished run with other videos, captions, settings "
                                 "or model; tick 'Start over' to discard it, or choose another name") from None


def _captions(text: str, count: int) -> list[str]:
    """One caption per video: a single line for all, or one line per video (blank lines ignored)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise AliceError("the caption is empty; describe what the clips show (one line for all, or one per video)")
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise AliceError(f"{len(lines)} caption lines for {count} videos; write one line for all clips, or exactly "
                         "one line per video in upload order")
    return lines
