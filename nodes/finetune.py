"""Alice Finetune (LoRA): trains a LoRA for the 4-step student (and one for the teacher) on the user's own clips.

A thin adapter over `alice_core.train.finetune`. Inside ComfyUI the progress bar runs across both stages and the
node shows the stage and the loss as its progress text; Cancel checkpoints the run and ends it as "interrupted";
queueing the node again with the same inputs resumes from that checkpoint. The work folder is derived from
`lora_name` alone, so resuming needs nothing but the same node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch

from alice_core.bundle import BUNDLED_DIR, bundled_models, resolve_bundle
from alice_core.errors import AliceError
from alice_core.hub import alice_home
from alice_core.train.clips import TrainingClip, clips_from_folder, clips_from_images
from alice_core.train.finetune import FinetuneCancelled, FinetuneConfig, lora_file_stem
from alice_core.train.finetune_job import FinetuneOutputsExist, ForeignCheckpoint, run_finetune_job

from . import host
from .base import AliceNode
from .loaders import bundle_entries
from .sampling import MAX_SEED

logger = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"
# Checkpoints live outside the loras folder: ComfyUI lists every .pt under it, and the LoRA list must show LoRAs only.
WORK_FOLDER = "alice-finetune"
STAGE_LABELS = {"teacher": "teacher LoRA", "student": "student LoRA (rCM)"}


def lora_stem(lora_name: str) -> str:
    """The output name without '.safetensors', refused when it is not a plain file name."""
    return lora_file_stem(lora_name, "Alice Finetune (LoRA): lora_name")


def work_folder(stem: str) -> Path:
    """Where a run's checkpoint waits until the run completes: ComfyUI's user folder, else $ALICE_HOME."""
    root = Path(host.folder_paths.get_user_directory()) if host.folder_paths is not None else alice_home()
    return root / WORK_FOLDER / stem


def _bundle_source(model_name: str) -> str:
    if model_name in bundled_models():
        return model_name
    return str(host.model_path("diffusion_models", model_name).parent)  # '<folder>/model.json' -> the bundle folder


def _clips_folder(text: str) -> Path:
    """A relative folder is taken inside ComfyUI's input folder (the working folder outside ComfyUI), else among
    the bundled models' files ('alice-tiny/example_clips': the clips the shared finetune workflow trains on)."""
    folder = Path(text.strip()).expanduser()
    if folder.is_absolute():
        return folder
    inside = Path(host.folder_paths.get_input_directory()) / folder if host.folder_paths is not None else folder
    shipped = BUNDLED_DIR / folder
    if not inside.exists() and shipped.resolve().is_relative_to(BUNDLED_DIR.resolve()) and shipped.is_dir():
        return shipped
    return inside


def _progress_text_sender() -> Callable[[str], None] | None:
    """send(text) showing text on the running node (ComfyUI's PromptServer.send_progress_text), or None."""
    if host.folder_paths is None:
        return None
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:  # older ComfyUI: the text goes to the log only
        return None
    context = get_executing_context()
    server = PromptServer.instance
    if context is None or not hasattr(server, "send_progress_text"):
        return None
    return lambda text: server.send_progress_text(text, context.node_id, server.client_id)


class _ComfyHooks:
    """The finetune's progress and should_cancel in ComfyUI terms: one bar over both stages, Cancel as a request
    that the API answers by checkpointing (ComfyUI's flag is read, not consumed, so the checkpoint gets written)."""

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.offsets = {"teacher": 0, "student": cfg.teacher_steps}
        self.total = cfg.teacher_steps + cfg.student_steps
        self.log_every = cfg.checkpoint_every
        self.bar = host.comfy_utils.ProgressBar(self.total) if host.comfy_utils is not None else None
        self.send_text = _progress_text_sender()
        self.interrupted = False

    def should_cancel(self) -> bool:
        if host.comfy_mm is not None and host.comfy_mm.processing_interrupted():
            self.interrupted = True
        return self.interrupted

    def progress(self, stage: str, step: int, total: int, loss: float) -> None:
        line = f"{STAGE_LABELS[stage]} step {step}/{total}, loss {loss:.4f}"
        if self.send_text is not None:
            self.send_text(line)
        if step % self.log_every == 0 or step == total:
            logger.info("Alice finetune: %s", line)
        if self.bar is None:
            return
        try:
            self.bar.update_absolute(self.offsets[stage] + step, self.total)
        except host.comfy_mm.InterruptProcessingException:
            # The bar's hook saw Cancel (and cleared it): remember it, so the API checkpoints at its next check.
            self.interrupted = True

    def raise_interrupt(self, cancelled: FinetuneCancelled) -> NoReturn:
        """ComfyUI's own interrupt, so the queue shows "interrupted" rather than an error."""
        logger.info("Alice finetune: %s", cancelled)
        if self.send_text is not None:
            self.send_text("cancelled; queue the node again to resume from the checkpoint")
        if host.comfy_mm is None:
            raise cancelled
        host.comfy_mm.throw_exception_if_processing_interrupted()  # clears ComfyUI's flag as it raises
        raise host.comfy_mm.InterruptProcessingException() from None  # the bar's hook had cleared it already


class AliceFinetune(AliceNode):
    DISPLAY_NAME = "Alice Finetune (LoRA)"
    DESCRIPTION = (
        "Trains a LoRA on your clips: first the teacher learns them, then the 4-step student is distilled from it. "
        "Writes <lora_name>.safetensors (student) and <lora_name>.teacher.safetensors into models/loras; the Alice "
        "LoRA Loader lists the two as <lora_name> and puts each on its network. Cancel keeps a checkpoint; queue again with the same inputs to resume."
    )
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "teacher_lora_name")
    OUTPUT_NODE = True  # it writes files: runs even when nothing is connected to it

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        d = FinetuneConfig()
        steps = {"min": 0, "max": 100000}
        lr = {"min": 1e-6, "max": 1.0, "step": 1e-5}
        return {
            "required": {
                "model_name": ([*bundled_models(), *bundle_entries()], {
                    "tooltip": "a model bundle with a teacher and a 4-step student (bundled, or a folder with "
                               "model.json in models/diffusion_models)"}),
                "caption": ("STRING", {"multiline": True, "default": "",
                                       "tooltip": "caption of the image batch; for clips_folder, empty means each "
                                                  "video's .txt file, text means this caption for every clip"}),
                "lora_name": ("STRING", {"default": "my_lora", "tooltip": "file name written into models/loras"}),
                "rank": ("INT", {"default": d.rank, "min": 1, "max": 256,
                                 "tooltip": "LoRA rank: larger learns more and makes a bigger file"}),
                "alpha": ("FLOAT", {"default": d.alpha, "min": 0.01, "max": 1024.0, "step": 0.5,
                                    "tooltip": "LoRA scale: the update is multiplied by alpha / rank"}),
                "teacher_steps": ("INT", {"default": d.teacher_steps, **steps, "tooltip": "stage 1: the teacher "
                                          "learns the clips (flow matching); 0 skips it"}),
                "student_steps": ("INT", {"default": d.student_steps, **steps, "tooltip": "stage 2: the 4-step "
                                          "student is distilled from the finetuned teacher (rCM); 0 keeps the "
                                          "teacher's adapter as is"}),
                "teacher_lr": ("FLOAT", {"default": d.teacher_lr, **lr, "tooltip": "stage 1 learning rate"}),
                "student_lr": ("FLOAT", {"default": d.student_lr, **lr, "tooltip": "stage 2 learning rate"}),
                "batch_size": ("INT", {"default": d.batch_size, "min": 1, "max": 64,
                                       "tooltip": "clips per step: more is smoother and needs more memory"}),
                # not randomised after each queue (the frontend's default for a seed): a run resumes only
                # with the settings it started with
                "seed": ("INT", {"default": d.seed, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                                 "tooltip": "the run's randomness: the same seed and inputs train the same LoRA"}),
                "checkpoint_every": ("INT", {"default": d.checkpoint_every, "min": 1, "max": 100000,
                                             "tooltip": "steps between checkpoints (Cancel also writes one)"}),
                "restart": ("BOOLEAN", {"default": False,
                                        "tooltip": "discard this lora_name's checkpoint and start over, replacing "
                                                   "an existing LoRA of that name"}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "frames cut into clips of the model's frame count"}),
                "clips_folder": ("STRING", {"default": "", "tooltip": "folder of videos with same-name .txt "
                                                                      "captions (relative: inside ComfyUI/input; "
                                                                      "alice-tiny/example_clips: the shipped "
                                                                      "examples)"}),
            },
        }

    def execute(self, model_name: str, caption: str, lora_name: str, rank: int, alpha: float, teacher_steps: int,
                student_steps: int, teacher_lr: float, student_lr: float, batch_size: int, seed: int,
                checkpoint_every: int, restart: bool, images: torch.Tensor | None = None,
                clips_folder: str = "") -> tuple[str, str]:
        stem = lora_stem(lora_name)
        if teacher_steps + student_steps == 0:
            raise AliceError("inputs 'teacher_steps' and 'student_steps' are both 0, so nothing would be trained; "
                             "set teacher_steps to e.g. 100")
        source = _bundle_source(model_name)
        cfg = FinetuneConfig(rank=rank, alpha=alpha, teacher_steps=teacher_steps, student_steps=student_steps,
                             teacher_lr=teacher_lr, student_lr=student_lr, batch_size=batch_size, seed=seed,
                             checkpoint_every=checkpoint_every)
        clips = self._clips(source, images, clips_folder, caption)

        out_file = host.model_folders()["loras"][0] / f"{stem}{LORA_SUFFIX}"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        work = work_folder(stem)
        hooks = _ComfyHooks(cfg)
        try:
            result = run_finetune_job(source, clips, cfg, out_file, work, restart=restart,
                                      device=str(host.compute_device()), progress=hooks.progress,
                                      should_cancel=hooks.should_cancel)
        except FinetuneCancelled as cancelled:
            hooks.raise_interrupt(cancelled)
        except FinetuneOutputsExist as exc:
            raise AliceError(f"{exc.path} already exists; choose another lora_name, or turn on restart to train "
                             "again and replace it") from None
        except ForeignCheckpoint:
            raise AliceError(f"lora_name '{stem}' has an unfinished run with other clips, settings or base model "
                             f"({work}); turn on restart to discard it, or choose another lora_name") from None
        return (result.student_lora.name, result.teacher_lora.name)

    @staticmethod
    def _clips(source: str, images: torch.Tensor | None, clips_folder: str, caption: str) -> list[TrainingClip]:
        bundle = resolve_bundle(source)
        frames = bundle.defaults.frames
        clips: list[TrainingClip] = []
        if images is not None:
            if not caption.strip():
                raise AliceError("Alice Finetune (LoRA): caption is empty; describe what the image batch shows")
            if images.shape[0] < frames:
                raise AliceError(f"Alice Finetune (LoRA): input 'images' has {images.shape[0]} frames but "
                                 f"{bundle.name} trains on clips of {frames}; connect a batch of at least {frames}")
            if images.shape[0] % frames:
                logger.warning("Alice finetune: the last %d of %d images make no whole clip of %d frames; unused",
                               images.shape[0] % frames, images.shape[0], frames)
            clips += clips_from_images(images, caption.strip(), frames)
        if clips_folder.strip():
            clips += clips_from_folder(_clips_folder(clips_folder), caption.strip() or None)
        if not clips:
            raise AliceError("Alice Finetune (LoRA): no training clips; connect an IMAGE batch to 'images' or set "
                             "'clips_folder' to a folder of videos with .txt captions")
        return clips
