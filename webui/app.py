"""The Alice web app: prompt -> video in the browser (optionally with a LoRA), and LoRA finetuning on uploaded
clips; one job at a time per device.

`launch()` is what `alice app` runs; `build_app()` gives the Blocks for embedding or tests. The UI sends only
values (text, numbers, model and LoRA names from server-side lists) and, in the Finetune tab, uploaded videos,
which Gradio keeps in its upload cache; there are no path fields, and Gradio serves only the files this app wrote.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no usage pings

import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import torch

from alice_core.errors import AliceError
from alice_core.loading.precision import PRECISION_NAMES
from alice_core.models.runtime import DiTRuntime
from alice_core.pipeline import VideoPipeline
from alice_core.sampling import GenerationCancelled

from .feedback import ErrorNotes, whole_number
from .image_inputs import START_IMAGE_NOTES, build_image_inputs, clip_vision_update, start_image_update
from .finetune_tab import build_finetune_tab, lora_choices
from .jobs import CancelFlags, LivePreviews
from .models import default_frames, default_size, frame_presets, size_presets
from .sampler_inputs import build_sampler_inputs, sampler_updates
from .studio import Job, Result, Studio

SAMPLERS_TEXT = {"rcm": "4-step student (rCM)", "teacher": "teacher"}
GALLERY_LIMIT = 48
PREVIEW_POLL_S = 0.25  # how often a page with a job running asks for its newest step preview
MAX_SEED = 2**31 - 1
EXAMPLE_PROMPT = "a red ball moving to the right"  # in alice-tiny's caption vocabulary
PRECISION_INFO = ("bf16/fp16: for GPUs; fp8 saves memory, but on a CPU it runs 2-3x slower than bf16 (weights upcast "
                  "every call)")
# System fonts only: the default theme would fetch web fonts, and this app must work offline.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
# The status blocks under the Start/Generate buttons carry the progress bar: they need room for it.
CSS = """
.alice-video video, .alice-video img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.alice-status { min-height: 4.5em; }
"""


def _model_choices(studio: Studio) -> list[tuple[str, str]]:
    shown = []
    for c in studio.choices():
        text = c.label if c.available else f"{c.label} (not downloaded)"
        shown.append((f"{text} - {c.description}" if c.description else text, c.label))
    return shown


def _compare_note(pipe: VideoPipeline) -> str:
    if {"rcm", "teacher"} <= set(pipe.dits):
        return "Renders the 4-step student and the teacher with the same prompt, seed and size, side by side."
    return (f"**Teacher vs student is off for {pipe.name}:** it needs both a teacher and a distilled 4-step "
            f"student, and this model has only the {' and '.join(pipe.dits)}.")


def _model_info(pipe: VideoPipeline) -> str:
    width, height = default_size(pipe)
    samplers = ", ".join(SAMPLERS_TEXT.get(s, s) for s in pipe.dits)
    kind = START_IMAGE_NOTES[pipe.start_image_use()]
    return f"**{pipe.name}**: {kind}; {samplers}; default {width}x{height}, {default_frames(pipe)} frames."


class _Handlers:
    """The event handlers. Their parameter names are the public API names (gradio_client keyword arguments); a
    parameter with a default may be left out by an API client (start_image: text-to-video needs none)."""

    def __init__(self, studio: Studio, ui: SimpleNamespace) -> None:
        self.studio = studio
        self.ui = ui
        self.flags = CancelFlags()
        self.previews = LivePreviews()
        self.errors = ErrorNotes(studio)

    def _job(self, model, precision, sampler, steps, prompt, negative_prompt, seed, randomize_seed, size, frames,
             fps, lora, lora_strength, start_image, clip_vision, guidance, guidance_low) -> Job:
        if randomize_seed:
            seed = random.randint(0, MAX_SEED)
        seed = whole_number("Seed", seed, 0, MAX_SEED)
        return Job(model=model, prompt=prompt, negative_prompt=negative_prompt or "", seed=int(seed), size=size or "",
                   frames=frames, fps=int(fps), sampler=sampler, steps=int(steps), precision=precision,
                   lora=lora or "", lora_strength=float(lora_strength if lora_strength is not None else 1.0),
                   image=start_image, clip_vision=clip_vision or "", guidance=guidance, guidance_low=guidance_low)

    def _run(self, session: str, progress: gr.Progress, work):
        """work(progress_fn, should_cancel, preview_fn) under this session's cancel flag; None when cancelled.
        Each step's preview goes to self.previews, where the page's timer picks it up."""
        flag = self.flags.start(session)
        if self.studio.busy():
            progress(0, desc="waiting for the device")
        try:
            return work(lambda done, total, label: progress((done, total), desc=f"{label} step", unit="steps"),
                        flag.is_set, lambda image: self.previews.show(session, image))
        except GenerationCancelled:
            return None
        finally:
            self.flags.finish(session, flag)
            self.previews.end(session)

    @staticmethod
    def _history(history: list, results: list[Result]) -> list:
        for r in results:
            s = r.video.settings
            caption = f"{s.prompt[:80]} ({s.sampler} {s.steps} steps, seed {s.seed}, {r.wall_s:.1f} s)"
            history = [(str(r.path), caption), *history][:GALLERY_LIMIT]
        return history

    def generate(self, model, precision, sampler, student_steps, teacher_steps, prompt, negative_prompt, seed,
                 randomize_seed, size, frames, fps, lora, lora_strength, start_image=None, clip_vision=None,
                 guidance=None, guidance_low=None, history=None, request: gr.Request = None, progress=gr.Progress()):
        with self.errors.noted(request):
            steps = student_steps if sampler == "rcm" else teacher_steps
            job = self._job(model, precision, sampler, steps, prompt, negative_prompt, seed, randomize_seed, size,
                            frames, fps, lora, lora_strength, start_image, clip_vision, guidance, guidance_low)
            result = self._run(request.session_hash, progress, lambda p, c, v: self.studio.generate(job, p, c, v))
        if result is None:
            return [gr.skip()] * 5 + [CANCELLED_TEXT]
        history = self._history(history, [result])
        done = f"**Done:** {result.path.name} in {result.wall_s:.1f} s."
        return str(result.path), result.summary(), job.seed, history, history, done

    def compare(self, model, precision, sampler, student_steps, teacher_steps, prompt, negative_prompt, seed,
                randomize_seed, size, frames, fps, lora, lora_strength, start_image=None, clip_vision=None,
                guidance=None, guidance_low=None, history=None, request: gr.Request = None, progress=gr.Progress()):
        with self.errors.noted(request):
            job = self._job(model, precision, None, 1, prompt, negative_prompt, seed, randomize_seed, size, frames,
                            fps, lora, lora_strength, start_image, clip_vision, guidance, guidance_low)

            def both(report, should_cancel, preview):
                return self.studio.compare(job, int(student_steps), int(teacher_steps), report, should_cancel, preview)

            pair = self._run(request.session_hash, progress, both)
        if pair is None:
            return [gr.skip()] * 6 + [CANCELLED_TEXT]
        student, teacher = pair
        history = self._history(history, [student, teacher])
        return (
            gr.update(value=str(student.path),
                      label=f"Student, {student.video.settings.steps} steps: {student.wall_s:.2f} s"),
            gr.update(value=str(teacher.path),
                      label=f"Teacher, {teacher.video.settings.steps} steps: {teacher.wall_s:.2f} s"),
            {"student": student.summary(), "teacher": teacher.summary()},
            job.seed, history, history,
            f"**Done:** student {student.wall_s:.1f} s, teacher {teacher.wall_s:.1f} s (in **Teacher vs student**).",
        )

    def cancel(self, request: gr.Request) -> str:
        """Shown at once: Gradio drops the cancelled event's own answer."""
        self.flags.cancel(request.session_hash)
        return CANCELLED_TEXT

    def show_error(self, request: gr.Request) -> str:
        return self.errors.text(request)

    def model_changed(self, model, precision) -> dict:
        ui = self.ui
        try:
            choice = self.studio.choice(model)
            if not choice.available:
                return {ui.model_info: f"**{model}** is in the download catalogue; click **Download** to fetch it.",
                        ui.download: gr.update(visible=True),
                        ui.generate: gr.update(interactive=False), ui.compare: gr.update(interactive=False)}
            pipe = self.studio.pipeline(model, precision)
        except AliceError as exc:
            raise gr.Error(self.errors.public(str(exc)), print_exception=False) from None
        sampler_fields = (ui.sampler, ui.student_steps, ui.teacher_steps, ui.guidance, ui.guidance_low)
        return {
            **dict(zip(sampler_fields, sampler_updates(pipe))),
            ui.model_info: _model_info(pipe), ui.download: gr.update(visible=False),
            ui.generate: gr.update(interactive=True),
            ui.compare: gr.update(interactive={"rcm", "teacher"} <= set(pipe.dits)),
            ui.compare_note: _compare_note(pipe),
            ui.size: gr.update(choices=size_presets(pipe), value=size_presets(pipe)[0]),
            ui.frames: gr.update(choices=frame_presets(pipe), value=default_frames(pipe)),
            ui.fps: gr.update(value=pipe.defaults.fps),
            ui.start_image: start_image_update(pipe), ui.clip_vision: clip_vision_update(self.studio, pipe, model),
        }

    def refresh(self, model):
        choices = _model_choices(self.studio)
        known = [value for _, value in choices]
        return gr.update(choices=choices, value=model if model in known else self.studio.default_label)

    def refresh_clip_vision(self, clip_vision):
        names = self.studio.clip_vision_names()
        return gr.update(choices=names, value=clip_vision if clip_vision in names else next(iter(names), None))

    def refresh_loras(self, lora):
        return gr.update(choices=lora_choices(self.studio), value=lora if lora in self.studio.lora_names() else "")

    def download(self, model, progress=gr.Progress()):
        progress(0, desc=f"downloading {model}")
        def report(label: str, done: int, total: int | None) -> None:
            progress((done, total) if total else None, desc=label, unit="B")

        try:
            self.studio.download(model, report)
        except AliceError as exc:
            raise gr.Error(self.errors.public(str(exc)), print_exception=False) from None
        gr.Info(f"{model} downloaded")
        return gr.update(choices=_model_choices(self.studio), value=model)


CANCELLED_TEXT = "**Cancelled.** No new video was made; the last one stays. Press **Generate** to start again."


def build_app(studio: Studio, precision: str = "fp32") -> gr.Blocks:
    """The UI around `studio`, with the queue set to one generation at a time."""
    pipe = studio.pipeline(studio.default_label, precision)
    defaults = pipe.defaults
    ui = SimpleNamespace()
    with gr.Blocks(title="Alice - text to video") as demo:
        gr.Markdown("# Alice: text to video\nDescribe a clip, press **Generate**; or teach the model your own clips "
                    "in **Finetune**. One job runs at a time; while others are ahead of you, the panel shows your "
                    "place in the queue.")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=5):
                    ui.prompt = gr.Textbox(label="Prompt", lines=2, value=EXAMPLE_PROMPT,
                                           elem_id="prompt")
                    with gr.Row():
                        ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        ui.cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    # Progress, the outcome and errors show here, next to the buttons, at any window size.
                    ui.status = gr.Markdown("", elem_id="generate-status", elem_classes="alice-status")
                    build_image_inputs(studio, pipe, studio.default_label, ui)
                    ui.negative_prompt = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt)
                    with gr.Row():
                        # No min/max here: the handler's check names the field (Gradio's own does not).
                        ui.seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                        ui.randomize_seed = gr.Checkbox(label="Random seed", value=True, elem_id="random-seed")
                    with gr.Row():
                        ui.size = gr.Dropdown(size_presets(pipe), value=size_presets(pipe)[0], label="Size (WxH)",
                                              allow_custom_value=True, elem_id="size")
                        ui.frames = gr.Dropdown(frame_presets(pipe), value=default_frames(pipe), label="Frames",
                                                allow_custom_value=True, elem_id="frames")
                        ui.fps = gr.Slider(1, 60, value=defaults.fps, step=1, label="FPS")
                    with gr.Row():
                        ui.model = gr.Dropdown(_model_choices(studio), value=studio.default_label, label="Model",
                                               scale=4, elem_id="model")
                        ui.refresh = gr.Button("↻", scale=0, min_width=40)
                        ui.download = gr.Button("Download", scale=1, visible=False)
                        ui.precision = gr.Dropdown(list(PRECISION_NAMES), value=precision, label="Precision", scale=2,
                                                   info=PRECISION_INFO)
                    ui.model_info = gr.Markdown(_model_info(pipe), elem_id="model-info")
                    build_sampler_inputs(pipe, ui)
                    with gr.Row():
                        # allow_custom_value: the list grows while the app runs; Studio checks every name.
                        ui.lora = gr.Dropdown(lora_choices(studio), value="", label="LoRA", allow_custom_value=True,
                                              elem_id="lora", info="made in the Finetune tab, or put in the app's "
                                                                   "LoRA folder")
                        ui.lora_strength = gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="LoRA strength")
                with gr.Column(scale=4):
                    # Each sampler step's x0 estimate while a video is made, in the video's place (alice_core.preview).
                    with gr.Column(visible=False) as ui.preview_box:
                        ui.preview = gr.Image(label="Preview (this step's estimate)", type="numpy", format="png",
                                              interactive=False, height=360, elem_id="live-preview",
                                              elem_classes="alice-video")
                    with gr.Column() as ui.video_box:
                        ui.video = gr.Video(label="Video", interactive=False, autoplay=True, loop=True, height=360,
                                            elem_id="output-video", elem_classes="alice-video")
                    ui.preview_timer = gr.Timer(PREVIEW_POLL_S, active=False)
                    ui.settings = gr.JSON(label="Settings of this video")
            with gr.Accordion("Teacher vs student", open=False, elem_id="compare-panel"):
                ui.compare_note = gr.Markdown(_compare_note(pipe))
                ui.compare = gr.Button("Render teacher vs student", interactive={"rcm", "teacher"} <= set(pipe.dits),
                                       elem_id="compare")
                with gr.Row():
                    ui.student_video = gr.Video(label="Student", interactive=False, autoplay=True, loop=True,
                                                elem_classes="alice-video")
                    ui.teacher_video = gr.Video(label="Teacher", interactive=False, autoplay=True, loop=True,
                                                elem_classes="alice-video")
            ui.gallery = gr.Gallery(label="This session's videos", columns=6, fit_columns=False, height=240,
                                    object_fit="contain", preview=False, interactive=False, elem_id="gallery")
        h = _Handlers(studio, ui)
        with gr.Tab("Finetune", id="finetune"):
            build_finetune_tab(studio, ui.lora, CancelFlags(), h.errors)  # own flags: its Cancel stops no generation
        history = gr.State([])  # (path, caption) pairs; kept on the server, never sent to the browser
        inputs = [ui.model, ui.precision, ui.sampler, ui.student_steps, ui.teacher_steps, ui.prompt,
                  ui.negative_prompt, ui.seed, ui.randomize_seed, ui.size, ui.frames, ui.fps, ui.lora, ui.lora_strength,
                  ui.start_image, ui.clip_vision, ui.guidance, ui.guidance_low, history]
        # Generation and comparison share one queue slot: one job at a time on the device. Progress and errors show
        # on the status block only, so an error leaves the last video, its settings and the gallery as they were.
        # The live preview's polling starts with the click (the job may wait in the queue), then the job runs.
        gen_event = h.previews.start_on(ui.generate, ui.preview_timer).then(
            h.generate, inputs, [ui.video, ui.settings, ui.seed, ui.gallery, history, ui.status], api_name="generate",
            concurrency_id="device", concurrency_limit=1, show_progress_on=[ui.status],
        )
        cmp_event = h.previews.start_on(ui.compare, ui.preview_timer).then(
            h.compare, inputs,
            [ui.student_video, ui.teacher_video, ui.settings, ui.seed, ui.gallery, history, ui.status],
            api_name="compare", concurrency_id="device", concurrency_limit=1, show_progress_on=[ui.status],
        )
        for event in (gen_event, cmp_event):
            event.failure(h.show_error, None, [ui.status], api_visibility="private", queue=False)
        # cancels= drops this session's waiting jobs; the flag stops a running one at the next step.
        cancel_event = ui.cancel.click(h.cancel, None, [ui.status], api_name="cancel", cancels=[gen_event, cmp_event],
                                       queue=False)
        h.previews.attach(ui.preview_timer, ui.preview, ui.preview_box, ui.video_box,
                          [gen_event, cmp_event], cancel_event)
        model_outputs = [ui.model_info, ui.download, ui.generate, ui.compare, ui.compare_note, ui.size, ui.frames,
                         ui.fps, ui.sampler, ui.student_steps, ui.teacher_steps, ui.guidance, ui.guidance_low,
                         ui.start_image, ui.clip_vision]
        for control in (ui.model, ui.precision):
            control.change(h.model_changed, [ui.model, ui.precision], model_outputs, api_visibility="private",
                           concurrency_id="loading")
        for trigger in (ui.refresh.click, demo.load):  # pick up new bundles and LoRAs
            trigger(h.refresh, [ui.model], [ui.model], api_visibility="private", queue=False)
            trigger(h.refresh_loras, [ui.lora], [ui.lora], api_visibility="private", queue=False)
            trigger(h.refresh_clip_vision, [ui.clip_vision], [ui.clip_vision], api_visibility="private", queue=False)
        ui.download.click(h.download, [ui.model], [ui.model], api_visibility="private", concurrency_id="loading").then(
            h.model_changed, [ui.model, ui.precision], model_outputs, api_visibility="private", concurrency_id="loading"
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    model: str | None = None,
    *,
    precision: str = "fp32",
    device: str | None = None,
    output_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    runtime: DiTRuntime = DiTRuntime(),
    block: bool = True,
    quiet: bool = False,
) -> gr.Blocks:
    """Start the app on host:port (loopback by default; a public share link only with share=True).
    `runtime` sets how the DiTs run: attention kernel, block swap (blocks kept on the GPU), compile.

    `model` is the model selected at start (default: the bundled alice-tiny). With block=False it returns the
    running Blocks (call .close() to stop it).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="alice-app-"))
    studio = Studio(output_dir, device=device, models_dir=models_dir, default_model=model, runtime=runtime)
    if not quiet:
        print(f"alice app: videos are saved in {studio.output_dir}; models folder {studio.models_dir}")
    return serve(studio, precision, host=host, port=port, share=share, block=block, quiet=quiet)


def serve(
    studio: Studio,
    precision: str = "fp32",
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
    quiet: bool = False,
) -> gr.Blocks:
    """Build the app around an existing Studio and start serving it."""
    demo = build_app(studio, precision)
    try:
        demo.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
            # Only what this app wrote may be served; the models folder never.
            allowed_paths=[str(studio.output_dir)], blocked_paths=[str(studio.models_dir)],
            theme=THEME, css=CSS, footer_links=["api", "settings"], run_history=False,
        )
    except OSError:
        raise AliceError(
            f"cannot listen on {host}:{port} (in use or not permitted); pass --port with a free port"
        ) from None
    return demo
