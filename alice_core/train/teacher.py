"""Training the tiny teacher: the Wan DiT with flow matching, time shift and caption dropout (for CFG).

One command (`alice train teacher`), resumable from an atomically written checkpoint, seeded, with a progress bar.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import AliceError
from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from ..models.space_to_depth import BLOCK_TRANSFORMS, SpaceToDepthAutoencoder, SpaceToDepthConfig, latent_affine
from ..world.render import BACKGROUND_SHADES, DIRECTIONS, HardExampleWeights, render_clip, sample_clip_spec
from .data import CachedTextEncoder, SyntheticVideoData, clips_to_video, latent_channel_statistics, video_statistics
from .flow_matching import (LOSS_WEIGHTINGS, flow_matching_loss, loss_weights, object_weights, per_frame_times,
                            sample_training_times)
from .probe import OPPOSITE, MetricsLog, MotionValidation, ProbeSettings, TrainingProbe, probe_prompts
from .state import EMA, load_checkpoint, read_resume_pack, save_atomic, training_device
from .warm_start import refit_latent, regroup_temporal_stride

TINY_TEXT_LEN = 32
CURRICULA: tuple[str, ...] = ("none", "straight_first")
AUTOCASTS: tuple[str, ...] = ("none", "bf16")


def tiny_dit_config(in_dim: int = 48) -> WanDiTConfig:
    """alice-tiny's DiT: Wan architecture at 6 layers x 256 wide, MiniLM text (384-d).

    in_dim 48 = space-to-depth (2x2 pixels x 4 frames x RGB); with the (1,2,2) patch a token carries 192 values,
    fewer than the model width, so the network can represent the identity map that v-prediction needs
    (v = (x_s - x0)/s contains x_s itself). With 8x8 blocks (768 values per token through 256 dims) the noise
    outside the head's 256-dim row space could never be removed and samples stayed noisy."""
    return WanDiTConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=6, in_dim=in_dim, out_dim=in_dim,
                        text_dim=384, text_len=TINY_TEXT_LEN)


@dataclass
class TeacherTrainConfig:
    steps: int = 20000
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    shift: float = 3.0
    uniform_time_fraction: float = 0.3
    size: int = 32
    frames: int = 9
    spatial_stride: int = 2
    # Frames packed into one latent frame. 4 (Wan's VAE ratio) is what alice-tiny was trained with; its teacher
    # then placed the object once per latent frame (static within each 4-frame group), hence the option to pack less.
    temporal_stride: int = 4
    seed: int = 0
    checkpoint_every: int = 100
    # Share of training times drawn uniformly in [high_noise_min, 1) (flow_matching.sample_training_times).
    high_noise_fraction: float = 0.0
    high_noise_min: float = 0.8
    # Share of samples whose latent frames get noise levels of their own (flow_matching.per_frame_times).
    frame_noise_fraction: float = 0.0
    loss_weighting: str = "none"  # or "min_snr" (flow_matching.loss_weights)
    # Extra loss weight on the object's latent positions (flow_matching.object_weights; 0: none).
    object_loss_weight: float = 0.0
    min_snr_gamma: float = 5.0
    # In-training SynthBench (probe.py) every eval_every steps with the EMA weights (0: never).
    eval_every: int = 200
    eval_prompts: int = 20
    eval_steps: int = 16
    eval_guidance: float = 3.0
    # "straight_first": no bounce until the in-training direction score reaches curriculum_gate (needs eval_every).
    curriculum: str = "none"
    curriculum_gate: float = 0.8
    # "haar": orthonormal Haar transform of each space-to-depth block, normalised per channel (space_to_depth.py).
    latent_transform: str = "none"
    # Resume pack of a teacher at a larger temporal stride that this run started from (see warm_start.py).
    init_from: str = ""
    # "bf16": the training forward and backward under bf16 autocast (1.4x faster on an AVX512-BF16 CPU).
    autocast: str = "none"
    dit: dict = field(default_factory=lambda: tiny_dit_config().to_dict())

    def autoencoder_config(self, mean: float | list[float], std: float | list[float]) -> SpaceToDepthConfig:
        return SpaceToDepthConfig(spatial_stride=self.spatial_stride, temporal_stride=self.temporal_stride, mean=mean,
                                  std=std, block_transform=self.latent_transform)

    def latent_statistics(self) -> tuple:
        """The latent normalisation of a new run: global for the raw latent, per channel for a block transform."""
        rng = np.random.default_rng(self.seed + 3)
        if self.latent_transform == "none":
            return video_statistics(rng, 256, self.size, self.frames)
        return latent_channel_statistics(rng, 256, self.size, self.frames, self.autoencoder_config(0.0, 1.0))

    def latent_channels(self) -> int:
        return 3 * self.temporal_stride * self.spatial_stride**2

    def latent_shape(self) -> tuple[int, int, int, int]:
        """(channels, latent frames, height, width) of one clip."""
        side = self.size // self.spatial_stride
        return self.latent_channels(), 1 + (self.frames - 1) // self.temporal_stride, side, side

    def check(self) -> None:
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise AliceError(f"unknown --loss-weighting {self.loss_weighting!r}; use one of {', '.join(LOSS_WEIGHTINGS)}")
        if self.latent_transform not in BLOCK_TRANSFORMS:
            raise AliceError(f"unknown --latent-transform {self.latent_transform!r}; use one of {', '.join(BLOCK_TRANSFORMS)}")
        if self.autocast not in AUTOCASTS:
            raise AliceError(f"unknown --autocast {self.autocast!r}; use one of {', '.join(AUTOCASTS)}")
        if self.curriculum not in CURRICULA:
            raise AliceError(f"unknown --curriculum {self.curriculum!r}; use one of {', '.join(CURRICULA)}")
        if self.curriculum != "none" and self.eval_every <= 0:
            raise AliceError("--curriculum advances on the in-training evaluation; set --eval-every above 0")
        if self.object_loss_weight < 0:
            raise AliceError(f"--object-loss-weight must be >= 0; got {self.object_loss_weight}")
        if not 0.0 <= self.frame_noise_fraction <= 1.0:
            raise AliceError(f"--frame-noise-fraction must be in [0, 1]; got {self.frame_noise_fraction}")
        if not 0.0 <= self.high_noise_fraction <= 1.0 or not 0.0 <= self.high_noise_min < 1.0:
            raise AliceError(f"--high-noise-fraction must be in [0, 1] and --high-noise-min in [0, 1); got "
                             f"{self.high_noise_fraction} and {self.high_noise_min}")


# What a resumed run may change; the rest (sizes, strides, latent, DiT, seed) is fixed by its weights and data.
RECIPE_FIELDS: frozenset[str] = frozenset({
    "steps", "batch_size", "lr", "warmup_steps", "checkpoint_every", "high_noise_fraction", "high_noise_min",
    "frame_noise_fraction", "loss_weighting", "min_snr_gamma", "object_loss_weight", "eval_every", "eval_prompts",
    "eval_steps", "curriculum", "curriculum_gate", "autocast",
})


def resumed_recipe_overrides(run_config: dict, overrides: dict) -> dict:
    """The overrides a resumed run takes; AliceError for one that would change what its weights are tied to."""
    for key, value in overrides.items():
        if key not in RECIPE_FIELDS and key in run_config and run_config[key] != value:
            flag = "--" + key.replace("_", "-")
            raise AliceError(f"{flag} {value} differs from the resumed run's {run_config[key]}: a run cannot change "
                             f"it; drop {flag} or start a new --out")
    return {key: value for key, value in overrides.items() if key in RECIPE_FIELDS}


def _lr_at(cfg: TeacherTrainConfig, step: int, warm_from: int = 0) -> float:
    """Linear warm-up over warmup_steps from warm_from: a run's first step, or where a resume pack (no optimiser
    state) restarted Adam, whose fresh moments at the full rate would jolt the weights."""
    return cfg.lr * min(1.0, (step - warm_from + 1) / cfg.warmup_steps)


def train_teacher(cfg: TeacherTrainConfig, out_dir: str | Path, device: str | None = None, threads: int | None = None,
                  max_minutes: float | None = None, resume_pack: str | Path | None = None,
                  init_from: str | Path | None = None, overrides: dict | None = None) -> Path:
    """Train (or resume) until cfg.steps or max_minutes; returns the checkpoint path.

    Resumes from out_dir/checkpoint.pt when present (exact), else from `resume_pack` (a committed fp16 pack).
    A resumed run keeps its own recipe except the `overrides` (RECIPE_FIELDS: what a running recipe may change).
    A new run may start from `init_from`, the resume pack of a teacher trained at a larger temporal stride."""
    from ..loading.text_encoders import load_minilm

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    dev = training_device(device)

    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
    else:
        state = read_resume_pack(resume_pack) if resume_pack else None
    if state is not None:
        cfg = TeacherTrainConfig(**{**asdict(cfg), **state["config"], "steps": cfg.steps,
                                    **resumed_recipe_overrides(state["config"], overrides or {})})
    cfg.check()
    dit_cfg = WanDiTConfig.from_dict(cfg.dit)
    if dit_cfg.in_dim != cfg.latent_channels() or dit_cfg.out_dim != cfg.latent_channels():
        raise AliceError(
            f"the DiT takes {dit_cfg.in_dim} latent channels but strides {cfg.spatial_stride}x{cfg.spatial_stride}x"
            f"{cfg.temporal_stride} give {cfg.latent_channels()}; use the run's own strides (a run cannot change them) "
            f"or a DiT config with in_dim = out_dim = {cfg.latent_channels()}"
        )
    torch.manual_seed(cfg.seed)
    model = WanDiT(dit_cfg).init_weights().to(dev).train()
    norm = None
    if state is None and init_from is not None:
        norm = _warm_start(model, cfg, init_from)
        cfg = replace(cfg, init_from=str(init_from))  # recorded in the run's checkpoints, not in the caller's config
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 2)
    step = warm_from = 0
    train_seconds = 0.0  # training wall time so far, evaluations excluded: pilots are compared at equal time
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state.get("ema", state["model"]))  # a resume pack restarts the EMA
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        gen.set_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        step = int(state["step"])
        warm_from = int(state.get("warm_from", 0)) if "optimizer" in state else step
        train_seconds = float(state.get("train_seconds", 0.0))
        norm = tuple(state["latent_norm"])
    elif norm is None:
        norm = cfg.latent_statistics()

    ae = SpaceToDepthAutoencoder(cfg.autoencoder_config(*norm))
    text = CachedTextEncoder(load_minilm(), dit_cfg.text_len)
    null_context = text.encode([""])[0]
    data = SyntheticVideoData(ae, text, size=cfg.size, frames=cfg.frames, rng=rng)
    stage = int(state.get("curriculum_stage", 0)) if state is not None else 0
    data.hard_weights = _curriculum_weights(cfg, stage)
    probe = _make_probe(cfg, dit_cfg, ae, text, null_context, dev) if cfg.eval_every > 0 else None
    metrics = MetricsLog(out_dir / "metrics.csv", step) if probe is not None else None

    def save() -> None:
        save_atomic({
            "config": asdict(cfg), "step": step, "warm_from": warm_from, "train_seconds": train_seconds,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(), "torch_rng": gen.get_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state), "latent_norm": list(norm), "curriculum_stage": stage,
        }, ckpt_path)

    deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
    bar = tqdm(total=cfg.steps, initial=step, desc="teacher", unit="step", dynamic_ncols=True)
    log_path = out_dir / "loss.csv"
    if log_path.exists():  # drop lines logged after the checkpoint we resume from (a kill between checkpoints)
        kept = [line for line in log_path.read_text().splitlines() if int(line.split(",")[0]) <= step]
        log_path.write_text("".join(f"{line}\n" for line in kept))
    log = log_path.open("a")
    recent_losses: list[float] = []

    def evaluate() -> None:
        nonlocal stage
        if metrics is not None and step not in metrics.logged_steps:
            loss = sum(recent_losses) / len(recent_losses) if recent_losses else float("nan")
            scores = metrics.evaluate(probe, ema.state_dict(), step, train_seconds, loss)
            recent_losses.clear()
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            if cfg.curriculum != "none" and stage == 0 and scores["direction"] >= cfg.curriculum_gate:
                stage = 1  # straight motion is learned: bring in the bounce
                data.hard_weights = _curriculum_weights(cfg, stage)
                bar.write(f"step {step}: curriculum stage 1 (direction {scores['direction']:.2f})")

    try:
        if step == 0:
            evaluate()
        while step < cfg.steps and time.monotonic() < deadline:
            started = time.monotonic()
            element_weights = None
            if cfg.object_loss_weight > 0:
                x0, ctx, _, mask = data.batch_with_object_mask(cfg.batch_size, cfg.spatial_stride,
                                                               cfg.temporal_stride)
                element_weights = object_weights(mask, cfg.object_loss_weight).to(dev)
            else:
                x0, ctx, _ = data.batch(cfg.batch_size)
            drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
            ctx[drop] = null_context
            s = sample_training_times(cfg.batch_size, cfg.shift, gen, cfg.uniform_time_fraction,
                                      cfg.high_noise_fraction, cfg.high_noise_min)
            if cfg.frame_noise_fraction > 0:  # drawn only when asked, so runs without it keep their random stream
                s = per_frame_times(s, x0.shape[2], cfg.frame_noise_fraction, cfg.shift, gen, cfg.uniform_time_fraction,
                                    cfg.high_noise_fraction, cfg.high_noise_min)
            noise = torch.randn(x0.shape, generator=gen)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, warm_from)
            weights = loss_weights(s, cfg.loss_weighting, cfg.min_snr_gamma)
            weights = weights.mean(dim=1) if weights.ndim == 2 else weights  # one weight per sample
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
                loss = flow_matching_loss(model, x0.to(dev), ctx.to(dev), s.to(dev), noise.to(dev), weights.to(dev),
                                          element_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(model, step)
            step += 1
            train_seconds += time.monotonic() - started
            recent_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(f"{step},{loss.item():.6f}\n")
            if cfg.eval_every > 0 and step % cfg.eval_every == 0:
                evaluate()
            if step % cfg.checkpoint_every == 0:
                log.flush()
                save()
        evaluate()  # where the run stops (steps or --max-minutes reached), so its last state is measured too
    finally:
        bar.close()
        log.close()
    save()
    return ckpt_path


def _curriculum_weights(cfg: TeacherTrainConfig, stage: int) -> HardExampleWeights | None:
    """The renderer's case weights at a curriculum stage: "straight_first" trains straight motion only (no bounce)
    until the in-training direction score reaches curriculum_gate, then the default mix."""
    if cfg.curriculum == "straight_first" and stage == 0:
        return HardExampleWeights(bounce=0.0)
    return None


def _make_probe(cfg: TeacherTrainConfig, dit_cfg: WanDiTConfig, ae: SpaceToDepthAutoencoder,
                text: CachedTextEncoder, null_context: torch.Tensor, dev: torch.device) -> TrainingProbe:
    """The in-training SynthBench probe, with fixed validation clips from their own random stream (the training
    stream is untouched)."""
    prompts = probe_prompts(cfg.eval_prompts)
    settings = ProbeSettings(cfg.eval_prompts, cfg.eval_steps, cfg.eval_guidance, cfg.shift)
    held = SyntheticVideoData(ae, text, size=cfg.size, frames=cfg.frames, rng=np.random.default_rng([cfg.seed, 99]))
    clips, captions = held.clips(settings.validation_clips)
    validation = (clips, ae.encode(clips_to_video(clips)), text.encode(captions))
    return TrainingProbe(settings, dit_cfg, ae, text.encode(prompts), null_context, prompts, cfg.latent_shape(), dev,
                         validation, _motion_validation(cfg, ae, text))


def _motion_validation(cfg: TeacherTrainConfig, ae: SpaceToDepthAutoencoder, text: CachedTextEncoder,
                       per_direction: int = 2) -> MotionValidation:
    """Straight-moving clips on plain backgrounds, `per_direction` for each direction, from their own stream."""
    rng = np.random.default_rng([cfg.seed, 98])
    specs = [sample_clip_spec(rng, cfg.size, cfg.frames, HardExampleWeights(bounce=0.0), motion=d)
             for d in DIRECTIONS for _ in range(per_direction)]
    clips = np.stack([render_clip(spec) for spec in specs])
    objects = [spec.objects[0] for spec in specs]
    own = [f"a {o.colour} {o.shape} moving {o.motion}" for o in objects]
    opposite = [f"a {o.colour} {o.shape} moving {OPPOSITE[o.motion]}" for o in objects]
    grey = torch.tensor([BACKGROUND_SHADES[spec.background.shade] for spec in specs], dtype=torch.float32)
    return MotionValidation(
        latents=ae.encode(clips_to_video(clips)), own=text.encode(own), opposite=text.encode(opposite),
        background=(grey / 127.5 - 1.0).view(-1, 1).expand(-1, 3).contiguous(),
        axes=torch.tensor([DIRECTIONS[o.motion] for o in objects], dtype=torch.float32),
    )


def _warm_start(model: WanDiT, cfg: TeacherTrainConfig, pack: str | Path) -> tuple:
    """Load the regrouped weights of the teacher in resume pack `pack` into `model`; returns the latent norm: the
    source's (kept, so the regrouped embedding sees inputs scaled as in training), or, for a run with another
    latent transform, the new latent's, with the weights refitted to it (warm_start.refit_latent)."""
    source = read_resume_pack(pack)
    src = TeacherTrainConfig(**source["config"])
    if (src.spatial_stride, src.size, src.frames) != (cfg.spatial_stride, cfg.size, cfg.frames):
        raise AliceError(f"{pack} was trained at {src.size}x{src.size}, {src.frames} frames, spatial stride "
                         f"{src.spatial_stride}; start this run with --size {src.size} --frames {src.frames}")
    weights, regrouped = regroup_temporal_stride(source["model"], WanDiTConfig.from_dict(src.dit), src.spatial_stride,
                                                 src.temporal_stride, cfg.temporal_stride)
    if regrouped != model.config:
        raise AliceError(f"{pack} holds a DiT that regroups to {regrouped}, not this run's {model.config}")
    norm = tuple(source["latent_norm"])
    old = replace(src, temporal_stride=cfg.temporal_stride).autoencoder_config(*norm)
    if old.block_transform != cfg.latent_transform:
        norm = cfg.latent_statistics()
        a_old, b_old = latent_affine(old)
        a_new, b_new = latent_affine(cfg.autoencoder_config(*norm))
        old_from_new = a_old @ torch.linalg.inv(a_new)
        weights = refit_latent(weights, regrouped, old_from_new, b_old - old_from_new @ b_new)
    model.load_state_dict(weights)
    return norm


def export_dit(checkpoint: str | Path, out_file: str | Path, use_ema: bool = True, dtype: torch.dtype = torch.float16) -> Path:
    """Write the (EMA) weights of a training checkpoint as an Alice DiT safetensors file with its config."""
    from ..loading.dit import write_dit

    state = load_checkpoint(checkpoint)
    weights = state["ema" if use_ema else "model"]
    cfg = WanDiTConfig.from_dict(state["config"]["dit"])
    return write_dit(out_file, {k: v.to(dtype) for k, v in weights.items()}, cfg, {"step": str(state["step"])})


def write_tiny_bundle(folder: str | Path, teacher_run: str | Path, student_run: str | Path | None = None,
                      name: str = "alice-tiny") -> Path:
    """A model bundle from a teacher run (and a distilled student run): fp16 EMA weights, the latent
    normalisation the teacher was trained with, and alice-tiny's defaults."""
    from ..bundle import ModelBundle, ModelDefaults

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    teacher_state = load_checkpoint(Path(teacher_run) / "checkpoint.pt")
    mean, std = teacher_state["latent_norm"]
    tcfg = teacher_state["config"]
    dits = {"teacher": export_dit(Path(teacher_run) / "checkpoint.pt", folder / "teacher.safetensors")}
    if student_run is not None:
        dits["rcm"] = export_dit(Path(student_run) / "checkpoint.pt", folder / "student.safetensors")
    bundle = ModelBundle(
        name=name, folder=folder, dits=dits,
        autoencoder={"type": "space_to_depth", **TeacherTrainConfig(**tcfg).autoencoder_config(mean, std).to_dict()},
        text_encoder="minilm",
        defaults=ModelDefaults(
            sampler="rcm" if "rcm" in dits else "teacher", width=tcfg["size"], height=tcfg["size"],
            frames=tcfg["frames"], fps=8, teacher_steps=50, guidance=3.0, shift=tcfg["shift"], sigma_max=80.0,
            negative_prompt="",
        ),
    )
    return bundle.write()
