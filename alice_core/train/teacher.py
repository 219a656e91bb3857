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
from ..models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig
from .data import CachedTextEncoder, SyntheticVideoData, video_statistics
from .flow_matching import flow_matching_loss, sample_training_times
from .state import EMA, load_checkpoint, read_resume_pack, save_atomic, training_device
from .warm_start import regroup_temporal_stride

TINY_TEXT_LEN = 32


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
    # Resume pack of a teacher at a larger temporal stride that this run started from (see warm_start.py).
    init_from: str = ""
    dit: dict = field(default_factory=lambda: tiny_dit_config().to_dict())

    def autoencoder_config(self, mean: float, std: float) -> SpaceToDepthConfig:
        return SpaceToDepthConfig(spatial_stride=self.spatial_stride, temporal_stride=self.temporal_stride, mean=mean, std=std)

    def latent_channels(self) -> int:
        return 3 * self.temporal_stride * self.spatial_stride**2


def _lr_at(cfg: TeacherTrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


def train_teacher(cfg: TeacherTrainConfig, out_dir: str | Path, device: str | None = None, threads: int | None = None,
                  max_minutes: float | None = None, resume_pack: str | Path | None = None,
                  init_from: str | Path | None = None) -> Path:
    """Train (or resume) until cfg.steps or max_minutes; returns the checkpoint path.

    Resumes from out_dir/checkpoint.pt when present (exact), else from `resume_pack` (a committed fp16 pack).
    A new run may start from `init_from`, the resume pack of a teacher trained at a larger temporal stride."""
    from ..models.text_encoders import MiniLMTextEncoder

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
        cfg = TeacherTrainConfig(**{**asdict(cfg), **state["config"], "steps": cfg.steps})
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
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state.get("ema", state["model"]))  # a resume pack restarts the EMA
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        gen.set_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        step = int(state["step"])
        norm = tuple(state["latent_norm"])
    elif norm is None:
        norm = video_statistics(np.random.default_rng(cfg.seed + 3), 256, cfg.size, cfg.frames)

    ae = SpaceToDepthAutoencoder(cfg.autoencoder_config(*norm))
    text = CachedTextEncoder(MiniLMTextEncoder(), dit_cfg.text_len)
    null_context = text.encode([""])[0]
    data = SyntheticVideoData(ae, text, size=cfg.size, frames=cfg.frames, rng=rng)

    def save() -> None:
        save_atomic({
            "config": asdict(cfg), "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": opt.state_dict(), "torch_rng": gen.get_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state), "latent_norm": list(norm),
        }, ckpt_path)

    deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
    bar = tqdm(total=cfg.steps, initial=step, desc="teacher", unit="step", dynamic_ncols=True)
    log_path = out_dir / "loss.csv"
    if log_path.exists():  # drop lines logged after the checkpoint we resume from (a kill between checkpoints)
        kept = [line for line in log_path.read_text().splitlines() if int(line.split(",")[0]) <= step]
        log_path.write_text("".join(f"{line}\n" for line in kept))
    log = log_path.open("a")
    try:
        while step < cfg.steps and time.monotonic() < deadline:
            x0, ctx, _ = data.batch(cfg.batch_size)
            drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
            ctx[drop] = null_context
            s = sample_training_times(cfg.batch_size, cfg.shift, gen, cfg.uniform_time_fraction)
            noise = torch.randn(x0.shape, generator=gen)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step)
            loss = flow_matching_loss(model, x0.to(dev), ctx.to(dev), s.to(dev), noise.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(model, step)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(f"{step},{loss.item():.6f}\n")
            if step % cfg.checkpoint_every == 0:
                log.flush()
                save()
    finally:
        bar.close()
        log.close()
    save()
    return ckpt_path


def _warm_start(model: WanDiT, cfg: TeacherTrainConfig, pack: str | Path) -> tuple[float, float]:
    """Load the regrouped weights of the teacher in resume pack `pack` into `model`; returns its latent norm (kept,
    so the regrouped embedding sees inputs scaled as in training)."""
    source = read_resume_pack(pack)
    src = TeacherTrainConfig(**source["config"])
    if (src.spatial_stride, src.size, src.frames) != (cfg.spatial_stride, cfg.size, cfg.frames):
        raise AliceError(f"{pack} was trained at {src.size}x{src.size}, {src.frames} frames, spatial stride "
                         f"{src.spatial_stride}; start this run with --size {src.size} --frames {src.frames}")
    weights, regrouped = regroup_temporal_stride(source["model"], WanDiTConfig.from_dict(src.dit), src.spatial_stride,
                                                 src.temporal_stride, cfg.temporal_stride)
    if regrouped != model.config:
        raise AliceError(f"{pack} holds a DiT that regroups to {regrouped}, not this run's {model.config}")
    model.load_state_dict(weights)
    return tuple(source["latent_norm"])


def export_dit(checkpoint: str | Path, out_file: str | Path, use_ema: bool = True, dtype: torch.dtype = torch.float16) -> Path:
    """Write the (EMA) weights of a training checkpoint as an Alice DiT safetensors file with its config."""
    from safetensors.torch import save_file

    from ..loading.dit import CONFIG_METADATA_KEY

    state = load_checkpoint(checkpoint)
    weights = state["ema" if use_ema else "model"]
    cfg = WanDiTConfig.from_dict(state["config"]["dit"])
    out_file = Path(out_file)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(tmp),
              metadata={CONFIG_METADATA_KEY: json.dumps(cfg.to_dict()), "step": str(state["step"])})
    tmp.chmod(0o644)  # safetensors creates 0600 files; shipped weights must be readable by everyone
    tmp.replace(out_file)
    return out_file


def write_tiny_bundle(folder: str | Path, teacher_run: str | Path, student_run: str | Path | None = None,
                      name: str = "alice-tiny") -> Path:
    """A model bundle from a teacher run (and a distilled student run): fp16 EMA weights, the latent
    normalisation the teacher was trained with, and alice-tiny's defaults."""
    from ..bundle import ModelBundle

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
        defaults={
            "sampler": "rcm" if "rcm" in dits else "teacher", "width": tcfg["size"], "height": tcfg["size"],
            "frames": tcfg["frames"], "fps": 8, "teacher_steps": 50, "guidance": 3.0, "shift": tcfg["shift"],
            "sigma_max": 80.0, "negative_prompt": "",
        },
    )
    return bundle.write()
