"""The Generate tab's sampler inputs: which network samples, its step count, and the teacher's guidance: one value
for a model with one DiT, and for a Wan2.2 A14B model (two experts) one per expert, the low-noise expert's field
shown only then. Every value starts at the chosen model's preset."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from alice_core.pipeline import VideoPipeline
from alice_core.sampling import RCM_MAX_STEPS

from .models import GUIDANCE_LABEL, GUIDANCE_LOW_LABEL, has_two_experts
from .studio import MAX_TEACHER_STEPS_UI

SAMPLER_LABELS = {"rcm": "student (rCM, 1-4 steps)", "teacher": "teacher"}
GUIDANCE_INFO = {False: "the teacher sampler's classifier-free guidance; 1 turns it off",
                 True: "Wan2.2 A14B: the teacher's guidance on the expert of the first, noisiest steps"}
GUIDANCE_LOW_INFO = "Wan2.2 A14B: the teacher's guidance on the expert of the last, low-noise steps"


def default_sampler(pipe: VideoPipeline) -> str:
    sampler = pipe.defaults.sampler_for(pipe.dits)
    return sampler if sampler in pipe.dits else next(iter(pipe.dits))


def _teacher_steps(pipe: VideoPipeline) -> int:
    return min(pipe.defaults.teacher_steps, MAX_TEACHER_STEPS_UI)


def _guidance_values(pipe: VideoPipeline) -> tuple[float, float | None]:
    """The preset's guidance and, for two experts, the low-noise expert's (None for one DiT: no such field)."""
    d = pipe.defaults
    if not has_two_experts(pipe):
        return d.guidance, None
    return d.guidance, d.guidance_low if d.guidance_low is not None else d.guidance


def sampler_updates(pipe: VideoPipeline) -> tuple[dict, dict, dict, dict, dict]:
    """What the sampler, steps and guidance fields show for `pipe` (order: build_sampler_inputs' fields). A
    one-DiT model's low-noise field is hidden and empty, so it sends nothing."""
    teacher, pair = "teacher" in pipe.dits, has_two_experts(pipe)
    guidance, low = _guidance_values(pipe)
    return (
        gr.update(choices=[(SAMPLER_LABELS[s], s) for s in pipe.dits], value=default_sampler(pipe)),
        gr.update(visible="rcm" in pipe.dits),
        gr.update(visible=teacher, value=_teacher_steps(pipe)),
        gr.update(visible=teacher, value=guidance, label=GUIDANCE_LABEL[pair], info=GUIDANCE_INFO[pair]),
        gr.update(visible=teacher and pair, value=low),
    )


def build_sampler_inputs(pipe: VideoPipeline, ui: SimpleNamespace) -> None:
    """ui.sampler, ui.student_steps, ui.teacher_steps, ui.guidance and ui.guidance_low, as `pipe` takes them."""
    teacher, pair = "teacher" in pipe.dits, has_two_experts(pipe)
    guidance, low = _guidance_values(pipe)
    ui.sampler = gr.Radio([(SAMPLER_LABELS[s], s) for s in pipe.dits], value=default_sampler(pipe), label="Sampler")
    with gr.Row():
        ui.student_steps = gr.Slider(1, RCM_MAX_STEPS, value=pipe.defaults.rcm_steps, step=1, label="Student steps",
                                     visible="rcm" in pipe.dits)
        ui.teacher_steps = gr.Slider(1, MAX_TEACHER_STEPS_UI, value=_teacher_steps(pipe), step=1,
                                     label="Teacher steps", visible=teacher, elem_id="teacher-steps")
    with gr.Row():
        # No min/max here: Studio's check names the field and its range (Gradio's own does not).
        ui.guidance = gr.Number(value=guidance, label=GUIDANCE_LABEL[pair], info=GUIDANCE_INFO[pair], visible=teacher,
                                elem_id="guidance")
        ui.guidance_low = gr.Number(value=low, label=GUIDANCE_LOW_LABEL, info=GUIDANCE_LOW_INFO,
                                    visible=teacher and pair, elem_id="guidance-low")
