"""benchmarks/finetune_new_colour.py's stage-1 row: a teacher adapter must really be put on the 4-step student.

A LoRA made by `alice finetune` for the teacher names the teacher, so the pipeline alone leaves the student as it
is (that row once measured the base student by mistake). The benchmark's transfer must patch the student exactly
as the same tensors marked for the student do."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alice_core.bundle import resolve_bundle
from alice_core.pipeline import GenerationSettings
from benchmarks.finetune_new_colour import student_pipeline

PROMPT = "a cyan square moving left"


def _example_lora_for(network: str, folder: Path) -> Path:
    """The bundled example LoRA's tensors, with its metadata naming `network`."""
    source = resolve_bundle("alice-tiny").folder / "loras" / "alice_example_lora.safetensors"
    with safe_open(str(source), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = dict(f.metadata())
    meta = json.loads(metadata["alice_lora"])
    meta["applies_to"] = network
    out = folder / f"for_{network}.safetensors"
    save_file(tensors, str(out), {**metadata, "alice_lora": json.dumps(meta)})
    return out


def _student_latents(pipe) -> torch.Tensor:
    with torch.inference_mode():
        return pipe(GenerationSettings(PROMPT, seed=3, sampler="rcm"), output_type="latent").latents


def test_teacher_adapter_is_applied_to_the_student_as_a_student_adapter_would_be(tmp_path: Path) -> None:
    teacher_lora, student_lora = _example_lora_for("teacher", tmp_path), _example_lora_for("rcm", tmp_path)
    base = _student_latents(student_pipeline(None))
    as_named = _student_latents(student_pipeline(teacher_lora))
    transferred = _student_latents(student_pipeline(teacher_lora, onto_student=True))
    reference = _student_latents(student_pipeline(student_lora))
    assert torch.equal(as_named, base)  # the file's own target: the student is untouched
    assert not torch.allclose(transferred, base, atol=1e-3)
    torch.testing.assert_close(transferred, reference, rtol=0, atol=1e-6)
