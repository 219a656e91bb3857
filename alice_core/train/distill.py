"""The rCM distillation loop: student (from the teacher) trained with sCM + DMD, a fake-score critic, EMA.

Switches: mode "rcm" (both), "scm" (consistency only), "dmd" (score distillation only), "cfg" (guidance
distillation only: a first stage whose student `init_student` then starts rCM from). Under torchrun the
three networks are sharded with FSDP2 (gloo on CPU, nccl on GPU): `batch_size` is the global batch, each rank
renders its own clips for its rows and draws the shared noise of the whole batch (see distributed.py).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..bundle import ModelBundle
from ..errors import AliceError
from ..loading.dit import load_dit
from ..models.dit import WanDiT
from ..world.captions import PromptAttributes
from .data import CachedTextEncoder, SyntheticVideoData
from .mining import HardExampleMiner
from .distributed import (
    any_rank, copy_full_into, full_optimizer_state, full_tensors, load_optimizer_state, local_rows, mean_over_ranks,
    rank_world, restore_stream, shard, stream_states,
)
from .rcm import (
    TrigFlow, backward_simulation, critic_loss, dmd_loss, guidance_distillation_loss, sample_lognormal_angles,
    sample_shifted_angles, scm_loss,
)
from .state import EMA, load_checkpoint, read_resume_pack, save_atomic, training_device

# (sCM loss scale, DMD loss scale); "cfg" has neither: its student regresses on the teacher's guided velocity
MODES = {"rcm": (100.0, 1.0), "scm": (100.0, 0.0), "dmd": (0.0, 1.0), "cfg": (0.0, 0.0)}


@dataclass
class DistillConfig:
    mode: str = "rcm"
    steps: int = 4000
    batch_size: int = 8
    student_lr: float = 5e-5
    fake_score_lr: float = 5e-5
    betas: tuple[float, float] | None = None  # None: rCM's (0, 0.999); (0.9, 0.999) for "cfg"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    guidance: float = 3.0           # teacher CFG folded into the targets: the student needs one pass per step
    p_mean: float = 0.7             # sCM time distribution (rCM's 1.3B values)
    p_std: float = 1.6
    dmd_shift: float = 5.0
    tangent_warmup: int = 200
    student_update_freq: int = 5
    max_simulation_steps: int = 4
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 50
    # Hard-example mining (mining.py): every mining_every iterations (0: never) the student is scored on the probe
    # prompts and mining_fraction of the clips then render the attributes of the ones it failed.
    mining_every: int = 0
    mining_fraction: float = 0.5
    # A DiT file (`alice train export` of a "cfg" run) the student starts from instead of the teacher's weights.
    init_student: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AliceError(f"distillation mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.mining_every < 0 or not 0.0 <= self.mining_fraction <= 1.0:
            raise AliceError(f"--mining-every must be >= 0 and --mining-fraction in [0, 1]; got {self.mining_every} "
                             f"and {self.mining_fraction}")
        # rCM's losses take beta1 0; the plain regression of "cfg" oscillates without momentum (seen: loss
        # 195 -> 250/100 alternating on a fixed batch, against 195 -> 5 with beta1 0.9)
        self.betas = tuple(self.betas) if self.betas is not None else ((0.9, 0.999) if self.mode == "cfg" else (0.0, 0.999))


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Distiller:
    """Holds the three networks and their optimisers; `step()` runs one student or critic iteration."""

    def __init__(self, teacher: WanDiT, cfg: DistillConfig, data: SyntheticVideoData, null_context: torch.Tensor,
                 device: torch.device, student: WanDiT | None = None, fake: WanDiT | None = None,
                 student_weights: dict[str, torch.Tensor] | None = None) -> None:
        """`student` / `fake` default to full copies of the teacher (rCM's set_up_model); `student_weights` then
        replace the student copy's weights (a guidance-distilled start). A LoRA finetune passes its own networks
        with only the adapters trainable; then only those are optimised and checkpointed.
        Under torchrun all three are sharded here (FSDP2), so pass them unsharded."""
        self.cfg = cfg
        self.rows = local_rows(cfg.batch_size)
        self.data = data
        self.device = device
        self.scm_scale, self.dmd_scale = MODES[cfg.mode]
        teacher = teacher.to(device).eval().requires_grad_(False)
        self.partial = student is not None  # only some weights train: save and average just those
        if student is None:
            student = copy.deepcopy(teacher).requires_grad_(True)
            if student_weights is not None:
                student.load_state_dict(student_weights)
        student = student.to(device).train()
        self.student = shard(student)
        self.fake = None
        if self.dmd_scale > 0:
            self.fake = shard((fake if fake is not None else copy.deepcopy(teacher).requires_grad_(True)).to(device).train())
        self.teacher = shard(teacher)
        self.opt_student = torch.optim.AdamW(_trainable(self.student), lr=cfg.student_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_fake = (torch.optim.AdamW(_trainable(self.fake), lr=cfg.fake_score_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
                         if self.fake is not None else None)
        self.ema = EMA(self.student, cfg.ema_decay, trainable_only=self.partial)
        self.null_context = null_context.to(device)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000)  # the same on every rank: shared noise
        self.iteration = 0

    # TrigFlow views are rebuilt per call so they always wrap the current modules.
    def _tf(self, net: WanDiT) -> TrigFlow:
        return TrigFlow(net)

    def is_student_phase(self, it: int) -> bool:
        if self.fake is None or (self.scm_scale > 0 and it < self.cfg.tangent_warmup):
            return True
        return it % self.cfg.student_update_freq == 0

    def warmup_ratio(self, it: int) -> float:
        return 1.0 if self.cfg.tangent_warmup <= 0 else min(1.0, it / self.cfg.tangent_warmup)

    def step(self) -> dict[str, float]:
        cfg, it = self.cfg, self.iteration
        x0, ctx, _ = self.data.batch(self.rows.stop - self.rows.start)
        x0, ctx = x0.to(self.device), ctx.to(self.device)
        null = self.null_context.expand_as(ctx)
        shape, rows = (cfg.batch_size, *x0.shape[1:]), self.rows  # the global batch's and this rank's rows of it
        logs: dict[str, float] = {}
        n_sim = it % cfg.max_simulation_steps + 1
        if self.is_student_phase(it):
            self.opt_student.zero_grad(set_to_none=True)
            if cfg.mode == "cfg":
                t = sample_shifted_angles(cfg.batch_size, cfg.dmd_shift, self.gen)[rows].to(self.device)
                noise = torch.randn(shape, generator=self.gen)[rows].to(self.device)
                loss = guidance_distillation_loss(self._tf(self.student), self._tf(self.teacher), x0, ctx, null, t,
                                                  noise, cfg.guidance)
                loss.backward()
                logs["cfg"] = loss.item()
            if self.scm_scale > 0:
                t = sample_lognormal_angles(cfg.batch_size, cfg.p_mean, cfg.p_std, self.gen)[rows].to(self.device)
                noise = torch.randn(shape, generator=self.gen)[rows].to(self.device)
                out = scm_loss(self._tf(self.student), self._tf(self.teacher), x0, ctx, null, t, noise, cfg.guidance,
                               self.warmup_ratio(it), self.scm_scale)
                out.loss.backward()
                logs["scm"] = out.loss.item()
            dmd_active = self.dmd_scale > 0 and (self.scm_scale == 0 or it >= cfg.tangent_warmup)
            if dmd_active:
                g = backward_simulation(self._tf(self.student), shape, ctx, n_sim, self.gen, rows)
                t_d = sample_shifted_angles(cfg.batch_size, cfg.dmd_shift, self.gen)[rows].to(self.device)
                noise = torch.randn(shape, generator=self.gen)[rows].to(self.device)
                loss = dmd_loss(g, self._tf(self.fake), self._tf(self.teacher), ctx, null, t_d, noise, cfg.guidance, self.dmd_scale)
                loss.backward()
                logs["dmd"] = loss.item()
            torch.nn.utils.clip_grad_norm_(_trainable(self.student), cfg.grad_clip)
            self.opt_student.step()
            self.ema.update(self.student, it)
        else:
            with torch.no_grad():
                g = backward_simulation(self._tf(self.student), shape, ctx, n_sim, self.gen, rows)
            t_d = sample_shifted_angles(cfg.batch_size, cfg.dmd_shift, self.gen)[rows].to(self.device)
            noise = torch.randn(shape, generator=self.gen)[rows].to(self.device)
            self.opt_fake.zero_grad(set_to_none=True)
            loss = critic_loss(self._tf(self.fake), g, ctx, t_d, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(_trainable(self.fake), cfg.grad_clip)
            self.opt_fake.step()
            logs["critic"] = loss.item()
        self.iteration += 1
        return mean_over_ranks(logs)

    def _weights(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.partial:
            return {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}
        return net.state_dict()

    def _load_weights(self, net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        # A partial (LoRA) checkpoint holds only the trainable weights: every one of them, and nothing else.
        targets = self._weights(net)
        if set(targets) != set(weights):
            raise AliceError("the checkpoint's trainable weights do not match this run's networks; "
                             "delete the run folder or resume with the same settings")
        copy_full_into(targets, weights)

    def state_dict(self) -> dict:
        """The full (unsharded) state in the single-process layout. Under FSDP every rank must call it (it
        gathers) and only rank 0 gets the tensors: rank 0 writes. `numpy_rng` holds each rank's data stream."""
        state = {
            "config": {**asdict(self.cfg), "dit": self.teacher.config.to_dict()},
            "step": self.iteration, "student": full_tensors(self._weights(self.student)),
            "ema": full_tensors(self.ema.state_dict()), "opt_student": full_optimizer_state(self.opt_student),
            "torch_rng": self.gen.get_state(), "numpy_rng": stream_states(self.data.rng),
        }
        if self.fake is not None:
            state.update(fake=full_tensors(self._weights(self.fake)), opt_fake=full_optimizer_state(self.opt_fake))
        if hasattr(self.data, "focus"):  # rendered clips (hard-example mining); a finetune's own clips have none
            state["focus"] = json.dumps([[a.colour, a.shape, a.motion] for a in self.data.focus])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint written by any number of processes; a resume pack has no optimiser states, so
        those start fresh."""
        self._load_weights(self.student, state["student"])
        self.ema.load_state_dict(state.get("ema", self._weights(self.student)))  # a resume pack restarts the EMA
        if "opt_student" in state:
            load_optimizer_state(self.opt_student, state["opt_student"])
        if self.fake is not None:
            self._load_weights(self.fake, state["fake"])
            if "opt_fake" in state:
                load_optimizer_state(self.opt_fake, state["opt_fake"])
        self.gen.set_state(state["torch_rng"])
        restore_stream(self.data.rng, state["numpy_rng"])
        if "focus" in state:
            self.data.focus = tuple(PromptAttributes(*a) for a in json.loads(state["focus"]))
        self.iteration = int(state["step"])


def build_distiller(teacher_bundle: str | Path, cfg: DistillConfig, device: str | None = None) -> Distiller:
    """A Distiller for the teacher of a model bundle, fed with rendered clips at the bundle's default size."""
    from ..loading.text_encoders import load_text_encoder
    from ..loading.vae import load_autoencoder

    bundle = ModelBundle.read(teacher_bundle)
    if "teacher" not in bundle.dits:
        raise AliceError(f"{bundle.folder / 'model.json'}: no 'teacher' entry in dits; distillation needs the teacher")
    dev = training_device(device)
    rank, _ = rank_world()
    teacher = load_dit(bundle.dits["teacher"]).float()
    autoencoder = load_autoencoder(bundle.autoencoder, bundle.folder)
    text = CachedTextEncoder(load_text_encoder(bundle.text_encoder_source), teacher.config.text_len)
    d = bundle.defaults
    data = SyntheticVideoData(autoencoder, text, size=d.width, frames=d.frames,
                              rng=np.random.default_rng(cfg.seed * 1000 + rank))
    return Distiller(teacher, cfg, data, text.encode([""]), dev, student_weights=_initial_student(cfg, teacher))


def _initial_student(cfg: DistillConfig, teacher: WanDiT) -> dict[str, torch.Tensor] | None:
    if cfg.init_student is None:
        return None
    start = load_dit(cfg.init_student)
    if start.config != teacher.config:
        raise AliceError(f"--init-student {cfg.init_student}: its architecture differs from the teacher's; give a "
                         "student exported from a distillation run of this teacher (alice train export)")
    return {k: v.float() for k, v in start.state_dict().items()}


def distill(teacher_bundle: str | Path, cfg: DistillConfig, out_dir: str | Path, device: str | None = None,
            threads: int | None = None, max_minutes: float | None = None, resume_pack: str | Path | None = None) -> Path:
    """Run (or resume) distillation into out_dir/checkpoint.pt; only rank 0 writes.

    Resumes from out_dir/checkpoint.pt (exact) or else from a committed resume pack (optimisers re-warm)."""
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint.pt"
    rank, _ = rank_world()
    local_rows(cfg.batch_size)  # a batch that does not split over the processes fails before anything loads
    distiller = build_distiller(teacher_bundle, cfg, device)
    if ckpt.exists():
        distiller.load_state_dict(load_checkpoint(ckpt))
    elif resume_pack:
        distiller.load_state_dict(read_resume_pack(resume_pack))
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
    bar = tqdm(total=cfg.steps, initial=distiller.iteration, desc=f"distill[{cfg.mode}]", unit="it", disable=rank != 0)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    miner = _miner(distiller, out_dir / "mining.csv" if rank == 0 else None) if cfg.mining_every > 0 else None
    log = (out_dir / "loss.jsonl").open("a", buffering=1) if rank == 0 else None  # line-buffered: readable live

    def save() -> None:
        state = distiller.state_dict()  # every rank gathers; rank 0 writes
        if rank == 0:
            save_atomic(state, ckpt)

    try:
        while distiller.iteration < cfg.steps and not any_rank(time.monotonic() >= deadline):
            logs = distiller.step()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            if log:
                log.write(json.dumps({"it": distiller.iteration, **logs}) + "\n")
            if miner is not None and distiller.iteration % cfg.mining_every == 0:
                ema = full_tensors(distiller.ema.state_dict(), all_ranks=True)  # gathered: every rank mines alike
                distiller.data.focus = miner.mine(ema, distiller.iteration)
            if distiller.iteration % cfg.checkpoint_every == 0:
                save()
    finally:
        bar.close()
        if log:
            log.close()
    save()
    return ckpt


def _miner(distiller: Distiller, log_path: Path | None) -> HardExampleMiner:
    """Every rank mines the same way (same weights, same seed), so all draw from the same focus."""
    data = distiller.data
    latent_shape = data.autoencoder.encode(torch.zeros(1, 3, data.frames, data.size, data.size)).shape[1:]
    distiller.data.focus_fraction = distiller.cfg.mining_fraction
    return HardExampleMiner(distiller.student.config, data.autoencoder, data.text, tuple(latent_shape),
                            distiller.device, log_path, seed=distiller.cfg.seed)
