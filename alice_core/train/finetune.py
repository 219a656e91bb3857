"""LoRA finetuning of a model bundle on the user's own clips: the 4-step student learns a new style or subject.

Two stages, as rCM itself is built:
  1. teacher LoRA: the flow-matching teacher learns the clips (flow-matching loss, caption dropout for CFG);
  2. student LoRA: starts as a copy of the teacher's adapter (the student was distilled from the same base teacher,
     so the adapter transfers), then the rCM trainer distils the finetuned teacher (its LoRA merged, frozen) into
     the 4-step student with only adapters training: on the student, and on the fake-score critic (initialised
     from the finetuned teacher). `student_steps=0` keeps the plain transfer.
Training the student's LoRA directly with the flow-matching loss is not offered: a 4-step consistency model is not
a flow-matching velocity model, so that loss would pull it away from few-step sampling.

The work folder holds one checkpoint (written atomically every `checkpoint_every` steps and on cancel); calling
`finetune` again with the same settings resumes exactly, so a killed run ends with the same weights as an
uninterrupted one. Outputs are LoRA safetensors files in the PEFT layout with `alice_lora` metadata.

Under torchrun (`alice finetune` only) the networks are sharded with FSDP2, `batch_size` is the global batch, each
rank draws its own clips for its rows, and rank 0 alone writes the checkpoint and the LoRA files.

This module sets a run up (bundle, clips, memory check, checkpoint identity, output files); the two stages' loops
are `finetune_stages.py`, the settings `finetune_config.py`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..bundle import ModelBundle, resolve_bundle
from ..errors import AliceError
from ..limits import available_bytes
from ..loading.lora import with_lora, write_loras
from ..loading.output import file_sha256
from ..models.config import WanDiTConfig
from .clips import TrainingClip, fit_frames
from .data import CachedTextEncoder, clips_to_video
from .distributed import full_tensors, local_rows, rank_world, shard
from .finetune_config import FinetuneConfig
from .finetune_stages import ClipLatents, FinetuneCancelled, FinetuneProgress, FinetuneStages, use_ema
from .lora_layers import (
    add_trainable_loras,
    load_lora_parameters,
    lora_parameters,
    lora_state_dict,
    matches_target,
)
from .state import load_checkpoint, training_device

__all__ = [  # the stage loops' names too: front ends import them from here
    "CHECKPOINT_NAME", "FinetuneCancelled", "FinetuneConfig", "FinetuneProgress", "FinetuneResult", "ForeignCheckpoint",
    "TrainingClip", "check_memory", "default_work_folder", "estimate_memory", "finetune", "lora_file_stem",
    "teacher_lora_path",
]

CHECKPOINT_NAME = "finetune-checkpoint.pt"


class ForeignCheckpoint(AliceError):
    """The work folder holds the checkpoint of a run with other clips, settings or base model (`path`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} belongs to a run with other clips, settings or base model; delete it to start over "
                         "or pass another work folder")
        self.path = path


@dataclass
class FinetuneResult:
    student_lora: Path
    teacher_lora: Path
    losses: dict[str, list[float]] = field(default_factory=dict)  # per stage, the losses of this call's steps


# ------------------------------------------------------------------------------------------------- memory
def estimate_memory(config: WanDiTConfig, cfg: FinetuneConfig, tokens_per_clip: int, base_params: int,
                    weight_bytes: int = 4, processes: int = 1) -> dict[str, int]:
    """Bytes one process needs at its peak (stage 2): three base networks of `base_params` weights (teacher,
    student, critic), the adapters with gradients and AdamW moments, the activations one backward pass keeps
    (about 14 dim + 2 ffn_dim floats per token and block), and the JVP's attention scores with their tangents
    (math attention, [L, L] per head, one block at a time: the JVP runs without grad). With FSDP over
    `processes`, weights and adapters are sharded and each process runs its share of the batch."""
    adapters = sum(cfg.rank * (i + o) for o, i in _linear_shapes(config, cfg.target_modules))
    batch = cfg.batch_size // processes
    tokens = batch * tokens_per_clip
    return {
        "weights": 3 * base_params * weight_bytes // processes,
        "adapters": 3 * adapters * 4 * 4 // processes,  # student + critic + stage-1 teacher: value, grad, 2 moments
        "activations": config.num_layers * tokens * (14 * config.dim + 2 * config.ffn_dim) * 4
        + 2 * batch * config.num_heads * tokens_per_clip**2 * 4,
    }


def _linear_shapes(config: WanDiTConfig, targets: Sequence[str]) -> list[tuple[int, int]]:
    """[out, in] of the block Linears that match `targets`."""
    d, f = config.dim, config.ffn_dim
    per_block = {**{f"{a}.{p}": (d, d) for a in ("self_attn", "cross_attn") for p in "qkvo"},
                 "ffn.0": (f, d), "ffn.2": (d, f)}
    return [shape for name, shape in per_block.items() if matches_target(name, targets)] * config.num_layers


def check_memory(config: WanDiTConfig, cfg: FinetuneConfig, tokens_per_clip: int, base_params: int,
                 device: torch.device, weight_bytes: int = 4) -> dict[str, int]:
    """The estimate, or an AliceError naming what to lower when it exceeds what the device has free."""
    parts = estimate_memory(config, cfg, tokens_per_clip, base_params, weight_bytes, rank_world()[1])
    need, have = sum(parts.values()), available_bytes(device)
    if need > 0.9 * have:
        gib = 1024**3
        detail = ", ".join(f"{k} {v / gib:.1f}" for k, v in parts.items())
        raise AliceError(
            f"finetuning needs about {need / gib:.1f} GiB ({detail}) but the {device.type} has {have / gib:.1f} GiB "
            f"free; lower batch_size (now {cfg.batch_size}), use shorter or smaller clips, or a larger device"
        )
    return parts


# ------------------------------------------------------------------------------------------------- the run
def _run_fingerprint(cfg: FinetuneConfig, clips: list[TrainingClip], base_hashes: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps({"cfg": asdict(cfg), "base": base_hashes}, sort_keys=True).encode())
    for clip in clips:
        digest.update(clip.caption.encode())
        digest.update(np.ascontiguousarray(clip.frames).tobytes())
    return digest.hexdigest()


_PLAIN_NAME = re.compile(r"\w[\w .+-]*")  # one file name: no folders, no leading dot


def lora_file_stem(name: str, where: str = "LoRA name") -> str:
    """A LoRA output name without '.safetensors', refused unless it is a plain file name (UIs write it into their
    LoRA folder, so it must not reach outside)."""
    stem = name.strip().removesuffix(".safetensors")
    if not _PLAIN_NAME.fullmatch(stem) or stem.endswith("."):
        raise AliceError(f"{where} {name!r} must be a plain file name such as 'my_style' (letters, digits, space, "
                         ". _ + -; no folders)")
    return stem


def default_work_folder(out_file: str | Path, root: str | Path | None = None) -> Path:
    """Where a run for `out_file` keeps its checkpoint unless told otherwise: one folder per output file under
    `root`/alice-finetune (root: $ALICE_HOME), never beside the LoRA (UIs offer every file in a LoRA folder)."""
    from ..hub import alice_home

    out_file = Path(out_file).resolve()
    tag = hashlib.sha256(str(out_file).encode()).hexdigest()[:8]
    return Path(root or alice_home()) / "alice-finetune" / f"{out_file.stem}-{tag}"


def teacher_lora_path(out_file: str | Path) -> Path:
    out_file = Path(out_file)
    return out_file.with_name(f"{out_file.stem}.teacher{out_file.suffix}")


def finetune(
    model: str | Path | None,
    clips: list[TrainingClip],
    cfg: FinetuneConfig,
    out_file: str | Path,
    work_dir: str | Path,
    device: str | None = None,
    threads: int | None = None,
    progress: FinetuneProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Finetune bundle `model` (name or folder; None = the default model) on `clips`; writes the student LoRA to
    `out_file` and the teacher LoRA next to it (`<name>.teacher.safetensors`) when both stages are done, never over
    existing files. Resumes from `work_dir`. Front ends call `finetune_job.run_finetune_job` (the job's rules).

    Trains whatever autograd mode the caller is in: hosts such as ComfyUI run every node inside
    torch.inference_mode(), under which nothing can be trained. Every tensor of the run is made in here."""
    with torch.inference_mode(False), torch.enable_grad():
        return _finetune(model, clips, cfg, out_file, work_dir, device, threads, progress, should_cancel)


def _finetune(model, clips, cfg, out_file, work_dir, device, threads, progress, should_cancel) -> FinetuneResult:
    from ..loading.dit import load_dit
    from ..loading.text_encoders import load_text_encoder
    from ..loading.vae import load_autoencoder

    if threads:
        torch.set_num_threads(threads)
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise AliceError(f"LoRA output {out_file} must end in .safetensors")
    if not clips:
        raise AliceError("no training clips; give at least one video (or image batch) with a caption")
    local_rows(cfg.batch_size)  # the global batch splits evenly over the processes
    bundle = _finetunable_bundle(model)
    dev = training_device(device)
    d = bundle.defaults
    size, frames = (d.width, d.height), d.frames
    fitted = [TrainingClip(fit_frames(c.frames, size, frames, f"clip {i} ({c.caption!r})"), c.caption) for i, c in enumerate(clips)]

    base_hashes = {k: file_sha256(bundle.dits[k]) for k in ("teacher", "rcm")}
    fingerprint = _run_fingerprint(cfg, fitted, base_hashes)
    work_dir = Path(work_dir)
    ckpt_path = work_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None and state["fingerprint"] != fingerprint:
        raise ForeignCheckpoint(ckpt_path)

    teacher = load_dit(bundle.dits["teacher"]).float().to(dev)
    autoencoder = load_autoencoder(bundle.autoencoder, bundle.folder)
    text = CachedTextEncoder(load_text_encoder(bundle.text_encoder_source), teacher.config.text_len)
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(clips_to_video(c.frames[None])) for c in fitted]).to(dev)
    tokens_per_clip = math.prod(s // p for s, p in zip(latents.shape[2:], teacher.config.patch_size))
    check_memory(teacher.config, cfg, tokens_per_clip, sum(p.numel() for p in teacher.parameters()), dev)
    rank = rank_world()[0]
    data = ClipLatents(latents, text.encode([c.caption for c in fitted]).to(dev), [c.caption for c in fitted],
                       np.random.default_rng(cfg.seed if rank == 0 else (cfg.seed, rank)))  # a stream per rank
    null_context = text.encode([""]).to(dev)
    metadata = {
        "format": "alice-lora/1", "base_model": bundle.name, "rank": cfg.rank, "alpha": cfg.alpha,
        "target_modules": list(cfg.target_modules), "steps": {"teacher": cfg.teacher_steps, "student": cfg.student_steps},
        "learning_rates": {"teacher": cfg.teacher_lr, "student": cfg.student_lr}, "distill_mode": cfg.distill_mode,
        "sample_prompts": list(cfg.sample_prompts) or sorted({c.caption for c in fitted})[:4],
        "clips": len(fitted), "size": list(size), "frames": frames,
    }
    run = FinetuneStages(cfg, ckpt_path, fingerprint, data, null_context, dev, progress, should_cancel)

    adapters_t = add_trainable_loras(teacher, cfg.rank, cfg.alpha, cfg.target_modules, cfg.seed)
    run.train_teacher(shard(teacher), adapters_t, d.shift, state)
    teacher_sd = lora_state_dict(adapters_t)
    teacher_lora = full_tensors(lora_parameters(adapters_t), all_ranks=True)
    teacher_file = teacher_lora_path(out_file)
    if rank == 0 and not teacher_file.exists():  # a resumed run finds the one its interrupted run wrote after stage 1
        write_loras([(teacher_file, teacher_sd,
                      {**metadata, "applies_to": "teacher", "base_sha256": base_hashes["teacher"]})])

    # The finetuned teacher (adapter merged into a fresh, unsharded copy: stage 1's may be sharded) is what the
    # student and the critic distil from.
    del teacher
    teacher = load_dit(bundle.dits["teacher"]).float().to(dev)
    with_lora({"teacher": teacher}, teacher_sd, copy=False, merge=True)
    student = load_dit(bundle.dits["rcm"]).float().to(dev)
    adapters_s = add_trainable_loras(student, cfg.rank, cfg.alpha, cfg.target_modules, cfg.seed + 1)
    # The student starts from the teacher's adapter: the student was distilled from that same base teacher, so the
    # adapter transfers (measured on alice-tiny: it alone teaches the 4-step student a new colour); rCM refines it.
    load_lora_parameters(adapters_s, teacher_lora)
    fake = copy.deepcopy(teacher)
    add_trainable_loras(fake, cfg.rank, cfg.alpha, cfg.target_modules, cfg.seed + 2)
    distiller = run.train_student(teacher, student, fake, state)
    use_ema(distiller)
    student_sd = lora_state_dict(adapters_s)
    if rank == 0:
        write_loras([(out_file, student_sd, {**metadata, "applies_to": "rcm", "base_sha256": base_hashes["rcm"]})])
    return FinetuneResult(out_file, teacher_file, run.losses)


def _finetunable_bundle(model: str | Path | None) -> ModelBundle:
    bundle = resolve_bundle(str(model) if model is not None else None)
    if bundle is None:
        raise AliceError(f"{model} is not a model bundle; finetuning needs a bundle folder (model.json) with a "
                         "'teacher' and an 'rcm' DiT, such as alice-tiny")
    missing = [k for k in ("teacher", "rcm") if k not in bundle.dits]
    if missing:
        raise AliceError(f"{bundle.folder / 'model.json'}: dits lacks {', '.join(missing)}; finetuning needs both "
                         "the teacher and the rCM student")
    return bundle
