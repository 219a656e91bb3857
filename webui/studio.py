"""What the app does, without any Gradio: pick a model by label, generate one video at a time, save it.

Kept separate from the UI so the rules (allow-listed models, checked sizes, one generation per device, files
written only into the app's output folder) are plain Python and testable on their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from alice_core.bundle import DEFAULT_MODEL
from alice_core.errors import AliceError
from alice_core.pipeline import GeneratedVideo, GenerationSettings, VideoPipeline
from alice_core.sampling import RCM_MAX_STEPS
from alice_core.video_io import unique_path

from .models import (
    LOCAL_PREFIX, ModelChoice, PipelineCache, default_models_dir, download_model, list_model_choices, parse_frames,
    parse_size,
)

MAX_TEACHER_STEPS_UI = 100  # the library allows more; the app keeps one request from holding the device for long
# progress(done, total, description)
StepProgress = Callable[[int, int, str], None]


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


@dataclass
class Result:
    path: Path
    video: GeneratedVideo
    wall_s: float               # the whole request: text encoding, sampling, decoding and writing the file

    def summary(self) -> dict:
        """The settings shown next to the video (no server paths)."""
        info = dict(self.video.metadata())
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
    ) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir = Path(models_dir).expanduser().resolve() if models_dir else default_models_dir()
        self.pipelines = PipelineCache(device)
        self._device_lock = threading.Lock()  # one generation at a time on this device, whatever the queue does
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

    def busy(self) -> bool:
        return self._device_lock.locked()

    @contextlib.contextmanager
    def device_slot(self) -> Iterator[None]:
        """Hold the device: generations run one at a time, whatever the web queue lets through."""
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
        settings = GenerationSettings(
            prompt=job.prompt, negative_prompt=job.negative_prompt or None, seed=int(job.seed), sampler=sampler,
            steps=job.steps, width=width, height=height, frames=frames, fps=job.fps,
        )
        return pipe.resolve(settings)

    def generate(
        self,
        job: Job,
        progress: StepProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Result:
        pipe = self.pipeline(job.model, job.precision)
        settings = self.settings(job, pipe)
        with self.device_slot():
            return self._run(pipe, settings, progress, should_cancel, label=settings.sampler)

    def compare(
        self,
        job: Job,
        student_steps: int,
        teacher_steps: int,
        progress: StepProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
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

        with self.device_slot():
            first = self._run(pipe, student, offset(0, "student"), should_cancel, label="student")
            second = self._run(pipe, teacher, offset(student.steps, "teacher"), should_cancel, label="teacher")
        return first, second

    def _run(
        self,
        pipe: VideoPipeline,
        settings: GenerationSettings,
        progress: StepProgress | None,
        should_cancel: Callable[[], bool] | None,
        label: str,
    ) -> Result:
        start = time.perf_counter()
        report = (lambda done, total, _x0: progress(done, total, label)) if progress else None
        video = pipe.generate(settings, progress=report, should_cancel=should_cancel)
        path = pipe.save(video, unique_path(self.output_dir, "alice", ".mp4"))
        return Result(path=path, video=video, wall_s=time.perf_counter() - start)
