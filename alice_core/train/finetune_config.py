"""The settings of a LoRA finetune (`finetune.py`), checked when made: a bad value is refused naming the setting."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AliceError
from ..limits import check_finite
from .lora_layers import DEFAULT_TARGET_MODULES


@dataclass
class FinetuneConfig:
    rank: int = 16
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    teacher_steps: int = 300
    student_steps: int = 200
    teacher_lr: float = 5e-4
    student_lr: float = 1e-4
    batch_size: int = 4
    caption_dropout: float = 0.1
    uniform_time_fraction: float = 0.3  # as the tiny teacher's training: low noise levels get trained too
    distill_mode: str = "rcm"           # "rcm", or the ablations "scm" / "dmd"
    student_update_freq: int = 2        # student updates every 2nd iteration (the critic in between)
    tangent_warmup: int = 20            # the student already is a consistency model: a short warm-up suffices
    seed: int = 0
    checkpoint_every: int = 50
    sample_prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        self.sample_prompts = tuple(self.sample_prompts)
        for name in ("rank", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise AliceError(f"finetune setting {name} must be at least 1, got {getattr(self, name)}")
        for name in ("teacher_steps", "student_steps"):
            if getattr(self, name) < 0:
                raise AliceError(f"finetune setting {name} must be 0 or more, got {getattr(self, name)}")
        for name in ("teacher_lr", "student_lr", "alpha"):
            check_finite(getattr(self, name), f"--{name.replace('_', '-')}", positive=True)
        if self.distill_mode not in ("rcm", "scm", "dmd"):
            raise AliceError(f"distill_mode must be rcm, scm or dmd, got {self.distill_mode!r}")
