"""The Finetune tab: upload clips, caption them, train a LoRA for the 4-step student (and one for the teacher).

The LoRAs land in the app's LoRA folder (inside its models folder, never served) and appear in the Generate tab's
LoRA list. A finetune holds the device like a generation and shares the one-job queue. Cancel checkpoints the run;
Start with the same videos, captions and settings resumes it. Captions: one line is the caption of every clip;
several lines are one caption per video, in upload order.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from alice_core.errors import AliceError
from alice_core.train.finetune import FinetuneCancelled, FinetuneConfig

from .feedback import whole_number
from .studio import MAX_FINETUNE_BATCH, MAX_FINETUNE_RANK, MAX_FINETUNE_STEPS, FinetuneJob, Studio

# What each stage's loss is, shown with it: the numbers mean little without it.
STAGE_LABELS = {"teacher": "teacher LoRA", "student": "student LoRA (rCM)"}
LOSS_MEANINGS = {
    "teacher": "flow-matching loss: the teacher's error predicting the clips' noise-to-video velocity, falls as it "
               "learns them",
    "student": "rCM loss: the student's consistency + distribution-matching terms (or the critic's on critic "
               "steps); its size depends on the model, only its trend matters",
}
MAX_SEED = 2**31 - 1
RESUME_TEXT = ("A checkpoint is kept: press **Start finetune** again with the same videos, captions and settings "
               "to resume.")


def lora_choices(studio: Studio) -> list[tuple[str, str]]:
    """The Generate tab's LoRA list: none, then the app's LoRAs by name (one entry per finetune)."""
    return [("none", ""), *((name, name) for name in studio.lora_names())]


def _number(label: str, value, cast):
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise AliceError(f"{label} needs a number, got {value!r}") from None


class FinetuneHandlers:
    """The tab's event handlers; parameter names are the public API names (gradio_client keyword arguments)."""

    def __init__(self, studio: Studio, flags, errors) -> None:
        self.studio = studio
        self.flags = flags  # jobs.CancelFlags of this tab: its Cancel never stops a generation
        self.errors = errors  # app.ErrorNotes
        self.last: dict[str, str] = {}  # per session: the last progress line, for the Cancel message

    def start(self, model, videos, captions, lora_name, rank, alpha, teacher_steps, student_steps, teacher_lr,
              student_lr, batch_size, seed, checkpoint_every, restart, lora, request: gr.Request,
              progress=gr.Progress()):
        with self.errors.noted(request):
            return self._start(model, videos, captions, lora_name, rank, alpha, teacher_steps, student_steps,
                               teacher_lr, student_lr, batch_size, seed, checkpoint_every, restart, lora, request,
                               progress)

    def _start(self, model, videos, captions, lora_name, rank, alpha, teacher_steps, student_steps, teacher_lr,
               student_lr, batch_size, seed, checkpoint_every, restart, lora, request, progress):
        config = FinetuneConfig(
            rank=_number("Rank", rank, int), alpha=_number("Alpha", alpha, float),
            teacher_steps=_number("Teacher steps", teacher_steps, int),
            student_steps=_number("Student steps", student_steps, int),
            teacher_lr=_number("Teacher learning rate", teacher_lr, float),
            student_lr=_number("Student learning rate", student_lr, float),
            batch_size=_number("Batch size", batch_size, int), seed=whole_number("Seed", seed, 0, MAX_SEED),
            checkpoint_every=_number("Checkpoint every", checkpoint_every, int),
        )
        job = FinetuneJob(model=model, videos=[str(v) for v in videos or []], captions=captions or "",
                          lora_name=lora_name or "", config=config, restart=bool(restart))
        total = config.teacher_steps + config.student_steps
        offsets = {"teacher": 0, "student": config.teacher_steps}
        session = request.session_hash
        self.last[session] = "before the first step"

        def report(stage: str, step: int, steps: int, loss: float) -> None:
            self.last[session] = f"{STAGE_LABELS[stage]} step {step}/{steps}, loss {loss:.4f}"
            progress((offsets[stage] + step, total), desc=f"{self.last[session]} ({LOSS_MEANINGS[stage]})",
                     unit="steps")

        flag = self.flags.start(session)
        progress(0, desc="waiting for the device" if self.studio.busy() else "reading the clips")
        start = time.perf_counter()
        try:
            result = self.studio.finetune(job, report, flag.is_set)
        except FinetuneCancelled:
            return f"**Cancelled** at {self.last[session]}. {RESUME_TEXT}", gr.skip()
        finally:
            self.flags.finish(session, flag)
        losses = "; ".join(f"{STAGE_LABELS[stage]} loss {values[0]:.4f} -> {values[-1]:.4f} ({LOSS_MEANINGS[stage]})"
                           for stage, values in result.losses.items() if values)
        status = (f"**Saved {result.student_lora.stem}** in {time.perf_counter() - start:.1f} s: pick it in the "
                  "Generate tab's LoRA list; the app applies its student part to the 4-step sampler and its teacher "
                  f"part to the teacher. First -> last loss: {losses or 'none'}.")
        return status, gr.update(choices=lora_choices(self.studio), value=lora)

    def cancel(self, request: gr.Request) -> str:
        """Shown at once: Gradio drops the cancelled event's own answer. The run checkpoints at its next step."""
        if not self.flags.cancel(request.session_hash):
            return "**Cancelled.** No finetune was running."
        return f"**Cancelled** at {self.last.get(request.session_hash, 'the first step')}. {RESUME_TEXT}"

    def show_error(self, request: gr.Request) -> str:
        return self.errors.text(request)


def build_finetune_tab(studio: Studio, lora_dropdown: gr.Dropdown, flags, errors) -> None:
    """The tab's components and events; call inside `with gr.Tab(...)` of the app's Blocks."""
    d = FinetuneConfig()
    ui = SimpleNamespace()
    gr.Markdown("Teach the 4-step model a style or subject from your own clips. The LoRA is saved in the app's "
                "LoRA folder and appears in the Generate tab's **LoRA** list. Cancel keeps a checkpoint; Start "
                "again with the same inputs resumes.")
    with gr.Row():
        with gr.Column(scale=5):
            choices = studio.finetune_choices()
            ui.model = gr.Dropdown(choices, value=studio.default_label if studio.default_label in choices else None,
                                   label="Model to finetune", elem_id="finetune-model")
            ui.videos = gr.File(label="Training videos", file_count="multiple", file_types=["video"],
                                type="filepath", elem_id="finetune-videos")
            ui.captions = gr.Textbox(label="Caption", lines=3, elem_id="finetune-captions",
                                     info="one line: the caption of every clip; several lines: one per video, "
                                          "in upload order")
            ui.lora_name = gr.Textbox(label="LoRA name", value="my_lora", elem_id="finetune-lora-name")
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    ui.rank = gr.Number(label="Rank", value=d.rank, precision=0, minimum=1, maximum=MAX_FINETUNE_RANK)
                    ui.alpha = gr.Number(label="Alpha", value=d.alpha, minimum=0.01)
                    ui.batch_size = gr.Number(label="Batch size", value=d.batch_size, precision=0, minimum=1,
                                              maximum=MAX_FINETUNE_BATCH)
                    ui.seed = gr.Number(label="Seed", value=d.seed, precision=0)
                with gr.Row():
                    ui.teacher_steps = gr.Number(label="Teacher steps", value=d.teacher_steps, precision=0,
                                                 minimum=0, maximum=MAX_FINETUNE_STEPS, elem_id="finetune-teacher-steps")
                    ui.student_steps = gr.Number(label="Student steps", value=d.student_steps, precision=0,
                                                 minimum=0, maximum=MAX_FINETUNE_STEPS, elem_id="finetune-student-steps")
                    ui.teacher_lr = gr.Number(label="Teacher learning rate", value=d.teacher_lr, minimum=0)
                    ui.student_lr = gr.Number(label="Student learning rate", value=d.student_lr, minimum=0)
                    ui.checkpoint_every = gr.Number(label="Checkpoint every (steps)", value=d.checkpoint_every,
                                                    precision=0, minimum=1)
            ui.restart = gr.Checkbox(label="Start over (discard this name's checkpoint, replace its LoRA)",
                                     value=False)
            with gr.Row():
                ui.start = gr.Button("Start finetune", variant="primary", elem_id="finetune-start")
                ui.cancel = gr.Button("Cancel", variant="stop", elem_id="finetune-cancel")
            # Right under the buttons: progress, the outcome and errors stay in view of Start.
            ui.status = gr.Markdown("", elem_id="finetune-status", elem_classes="alice-status")

    h = FinetuneHandlers(studio, flags, errors)
    inputs = [ui.model, ui.videos, ui.captions, ui.lora_name, ui.rank, ui.alpha, ui.teacher_steps, ui.student_steps,
              ui.teacher_lr, ui.student_lr, ui.batch_size, ui.seed, ui.checkpoint_every, ui.restart, lora_dropdown]
    # The device's one queue slot, shared with generation: a finetune holds the device until it ends.
    event = ui.start.click(h.start, inputs, [ui.status, lora_dropdown], api_name="finetune", concurrency_id="device",
                           concurrency_limit=1, show_progress_on=[ui.status])
    event.failure(h.show_error, None, [ui.status], api_visibility="private", queue=False)
    ui.cancel.click(h.cancel, None, [ui.status], api_name="cancel_finetune", cancels=[event], queue=False)
