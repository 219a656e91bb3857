"""The rules of a finetune job, the same for every front end (`alice finetune`, the ComfyUI node, the app): which
files a run owns, when it resumes, restarts or refuses. Front ends only choose the paths and word the typed errors
in their own terms (a node names its input, the app its checkbox, the CLI its flag).

  - a run writes `<out>.teacher.safetensors` when stage 1 ends and `<out>.safetensors` (student) at the end, never
    over an existing file: existing outputs are refused (`FinetuneOutputsExist`) unless the job restarts or resumes
    its own checkpoint (whose stage 1 wrote the teacher LoRA);
  - its checkpoint lives in the work folder; the same job again resumes from it; a checkpoint of a run with other
    clips, settings or base model is refused (`ForeignCheckpoint`) unless the job restarts;
  - restart discards the checkpoint and the outputs of that name first;
  - a completed run removes its work folder (the LoRA files are the result);
  - under torchrun, rank 0 alone deletes and writes files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import AliceError
from ..loading.lora import lora_samplers
from .distributed import barrier, rank_world
from .finetune import (
    CHECKPOINT_NAME, FinetuneConfig, FinetuneProgress, FinetuneResult, ForeignCheckpoint, TrainingClip, finetune,
    teacher_lora_path,
)

__all__ = ["FinetuneOutputsExist", "ForeignCheckpoint", "finetune_lora_files", "finetune_outputs", "run_finetune_job",
           "without_teacher_halves"]


class FinetuneOutputsExist(AliceError):
    """A LoRA of the job's name exists (and the job does not restart); `path` is the first one found."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists; choose another output name, or restart to replace it")
        self.path = path


def finetune_outputs(out_file: str | Path) -> tuple[Path, Path]:
    """(student LoRA, teacher LoRA) of a job writing `out_file`."""
    return Path(out_file), teacher_lora_path(out_file)


def without_teacher_halves(names: Iterable[str]) -> list[str]:
    """A LoRA list with each finetune shown once: `X.teacher.safetensors` is left out where `X.safetensors` is
    listed, because applying X applies both (`finetune_lora_files`). Names may be paths relative to a folder."""
    names = list(names)
    halves = {str(teacher_lora_path(name)) for name in names}
    return [name for name in names if name not in halves]


def finetune_lora_files(path: str | Path, samplers: list[str]) -> dict[str, Path]:
    """{sampler: LoRA file} for the networks LoRA `path` changes among `samplers`: a finetune's student LoRA on the
    4-step student and, where the model has a teacher, the teacher LoRA beside it on the teacher; any other LoRA
    on every network."""
    path = Path(path)
    files = {sampler: path for sampler in lora_samplers(path, samplers)}
    partner = teacher_lora_path(path)
    if "teacher" in samplers and "teacher" not in files and partner.is_file() and \
            lora_samplers(partner, samplers) == ["teacher"]:
        files["teacher"] = partner
    return files


def run_finetune_job(
    model: str | Path | None,
    clips: list[TrainingClip] | Callable[[], list[TrainingClip]],
    cfg: FinetuneConfig,
    out_file: str | Path,
    work_dir: str | Path,
    restart: bool = False,
    device: str | None = None,
    threads: int | None = None,
    progress: FinetuneProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Run, resume or restart the finetune that writes `out_file` (see the module's rules). `clips` may be a
    function, called only once the job's files are known to be free (reading videos takes time)."""
    work_dir = Path(work_dir)
    outputs = finetune_outputs(out_file)
    rank = rank_world()[0]
    if restart and rank == 0:
        shutil.rmtree(work_dir, ignore_errors=True)
        for path in outputs:
            path.unlink(missing_ok=True)
    barrier()
    existing = next((p for p in outputs if p.exists() or p.is_symlink()), None)
    resuming = (work_dir / CHECKPOINT_NAME).exists() and not outputs[0].exists()  # stage 1 wrote the teacher LoRA
    if existing is not None and not resuming:
        raise FinetuneOutputsExist(existing)
    if not outputs[0].parent.is_dir():
        raise AliceError(f"output folder {outputs[0].parent} does not exist; create it first")
    clips = clips() if callable(clips) else clips
    result = finetune(model, clips, cfg, out_file, work_dir, device=device, threads=threads, progress=progress,
                      should_cancel=should_cancel)
    if rank == 0:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result

