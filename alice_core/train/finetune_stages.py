"""The two loops of a LoRA finetune (`finetune.py` sets the run up): stage 1 trains the teacher's adapter with
the flow-matching loss, stage 2 distils the finetuned teacher into the student's adapter with the rCM trainer.
Both share progress reports, cancellation and the run's single atomic checkpoint, from which they resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import AliceError
from ..models.dit import WanDiT
from .distill import DistillConfig, Distiller
from .distributed import (
    any_rank, barrier, full_optimizer_state, full_tensors, load_optimizer_state, local_rows, mean_over_ranks,
    rank_world, restore_stream, stream_states,
)
from .finetune_config import FinetuneConfig
from .flow_matching import flow_matching_loss, sample_training_times
from .lora_layers import load_lora_parameters, lora_parameters
from .state import save_atomic

# progress(stage "teacher" | "student", steps done, steps in that stage, loss of the last step: in stage 2 the
# student's losses summed, or the critic's loss on critic iterations)
FinetuneProgress = Callable[[str, int, int, float], None]


class FinetuneCancelled(AliceError):
    """The caller asked to stop; the run was checkpointed and calling `finetune` again resumes it."""


class ClipLatents:
    """The training clips as latents and text states, drawn in seeded random batches (the trainers' data source)."""

    def __init__(self, latents: torch.Tensor, contexts: torch.Tensor, captions: list[str], rng: np.random.Generator) -> None:
        self.latents, self.contexts, self.captions, self.rng = latents, contexts, captions, rng

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        idx = self.rng.integers(len(self.captions), size=n)
        return self.latents[idx], self.contexts[idx], [self.captions[i] for i in idx]


def use_ema(distiller: Distiller) -> None:
    """The student LoRA ships its EMA weights (as the distilled student does)."""
    shadow = distiller.ema.state_dict()
    params = {n: p for n, p in distiller.student.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(shadow[name])


class FinetuneStages:
    """One finetune's loops, sharing progress, cancellation and the single atomic checkpoint (rank 0 reports and
    writes; a stop request on any rank stops all)."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        ckpt_path: Path,
        fingerprint: str,
        data: ClipLatents,
        null_context: torch.Tensor,
        device: torch.device,
        progress: FinetuneProgress | None,
        should_cancel: Callable[[], bool] | None,
    ) -> None:
        self.cfg, self.ckpt_path, self.fingerprint = cfg, ckpt_path, fingerprint
        self.data, self.null_context, self.device = data, null_context, device
        self.progress, self.should_cancel = progress, should_cancel
        self.losses: dict[str, list[float]] = {"teacher": [], "student": []}
        self.teacher_state: dict = {}

    def _report(self, stage: str, step: int, total: int, loss: float) -> None:
        self.losses[stage].append(loss)
        if self.progress and rank_world()[0] == 0:
            self.progress(stage, step, total, loss)

    def _save(self, extra: dict) -> None:
        if rank_world()[0] == 0:
            save_atomic({"fingerprint": self.fingerprint, "config": asdict(self.cfg), **self.teacher_state, **extra},
                        self.ckpt_path)

    def _stop_requested(self, save: Callable[[], None]) -> None:
        if any_rank(bool(self.should_cancel and self.should_cancel())):
            save()
            barrier()  # no rank leaves (and ends its process) while rank 0 is still writing the checkpoint
            raise FinetuneCancelled(f"finetune cancelled; run it again with the same settings to resume from {self.ckpt_path}")

    def train_teacher(self, teacher: WanDiT, adapters, shift: float, state: dict | None) -> None:
        cfg, data = self.cfg, self.data
        params = list(lora_parameters(adapters).values())
        opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, betas=(0.9, 0.99), weight_decay=0.0)
        gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same on every rank: noise for the global batch
        rows = local_rows(cfg.batch_size)
        step = 0
        if state is not None:
            load_lora_parameters(adapters, state["teacher_lora"])
            step = int(state["teacher_step"])
            if state["stage"] == "teacher":
                # Restored even when stage 1 had finished: stage 2 draws its batches from where stage 1 left the data
                # stream (a crash between the last stage-1 and the first stage-2 checkpoint lands here).
                load_optimizer_state(opt, state["teacher_opt"])
                gen.set_state(state["teacher_rng"])
                restore_stream(data.rng, state["numpy_rng"])

        def keep_result() -> None:  # every later checkpoint carries stage 1's result (stage 2 rebuilds from it)
            lora = full_tensors(lora_parameters(adapters))  # gathered: every rank calls it
            self.teacher_state = {"teacher_lora": {k: v.clone() for k, v in lora.items()}, "teacher_step": step}

        def save() -> None:
            keep_result()
            self._save({"stage": "teacher", "teacher_opt": full_optimizer_state(opt), "teacher_rng": gen.get_state(),
                        "numpy_rng": stream_states(data.rng)})

        teacher.train()
        while step < cfg.teacher_steps:
            self._stop_requested(save)
            x0, ctx, _ = data.batch(rows.stop - rows.start)
            drop = (torch.rand(cfg.batch_size, generator=gen)[rows] < cfg.caption_dropout).to(ctx.device)
            ctx = torch.where(drop[:, None, None], self.null_context, ctx)
            s = sample_training_times(cfg.batch_size, shift, gen, cfg.uniform_time_fraction)[rows].to(self.device)
            noise = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=gen)[rows].to(self.device)
            loss = flow_matching_loss(teacher, x0, ctx, s, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            self._report("teacher", step, cfg.teacher_steps, mean_over_ranks({"loss": loss.item()})["loss"])
            if step % cfg.checkpoint_every == 0 or step == cfg.teacher_steps:
                save()
        keep_result()
        teacher.eval()

    def train_student(self, teacher: WanDiT, student: WanDiT, fake: WanDiT, state: dict | None) -> Distiller:
        cfg = self.cfg
        dcfg = DistillConfig(mode=cfg.distill_mode, steps=cfg.student_steps, batch_size=cfg.batch_size,
                             student_lr=cfg.student_lr, fake_score_lr=cfg.student_lr, weight_decay=0.0,
                             tangent_warmup=cfg.tangent_warmup, student_update_freq=cfg.student_update_freq,
                             ema_decay=0.99, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every)
        distiller = Distiller(teacher, dcfg, self.data, self.null_context, self.device, student=student, fake=fake)
        if state is not None and state.get("stage") == "student":
            distiller.load_state_dict(state["distiller"])

        def save() -> None:
            self._save({"stage": "student", "distiller": distiller.state_dict()})

        while distiller.iteration < dcfg.steps:
            self._stop_requested(save)
            logs = distiller.step()
            self._report("student", distiller.iteration, dcfg.steps, sum(logs.values()))
            if distiller.iteration % dcfg.checkpoint_every == 0 or distiller.iteration == dcfg.steps:
                save()
        return distiller
