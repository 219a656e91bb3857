"""What the host application gives the nodes: model folders, the output folder, devices, progress and cancel.

Inside ComfyUI these come from `folder_paths`, `comfy.utils` and `comfy.model_management`. Outside it (tests,
scripts, another app running the nodes) the model folders are standalone Alice's, `$ALICE_HOME/<folder>` (where
`alice download` puts files), outputs go to `$ALICE_OUTPUT_DIR` (default: `output/` in the working directory), and
progress and cancel are no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from alice_core.errors import AliceError
from alice_core.hub import FOLDER_KINDS, ProgressCallback, standalone_folders
from alice_core.preview import Previewer
from alice_core.sampling import ProgressFn
from alice_core.video_io import unique_path

try:  # present only when ComfyUI imports this package
    import comfy.model_management as comfy_mm
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    comfy_mm = comfy_utils = folder_paths = None

PREVIEW_MAX_SIZE = 512  # ComfyUI's default --preview-size

# What ComfyUI lists as model files (folder_paths.supported_pt_extensions), for the same lists outside it.
MODEL_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


def in_comfyui() -> bool:
    return folder_paths is not None


def model_folders() -> dict[str, list[Path]]:
    """{'diffusion_models' | 'text_encoders' | 'vae' | 'loras': folders to look in}; downloads go to the first."""
    if folder_paths is not None:
        return {kind: [Path(p) for p in folder_paths.get_folder_paths(kind)] for kind in FOLDER_KINDS}
    return standalone_folders()


def model_files(kind: str) -> list[str]:
    """Model files of one kind, as paths relative to their folder."""
    if folder_paths is not None:
        return folder_paths.get_filename_list(kind)
    names: set[str] = set()
    for root in model_folders()[kind]:
        if root.is_dir():
            files = (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
            names.update(str(p.relative_to(root)) for p in files)
    return sorted(names)


def model_path(kind: str, name: str) -> Path:
    if folder_paths is not None:
        full = folder_paths.get_full_path(kind, name)
        if full is not None:
            return Path(full)
    else:
        for root in model_folders()[kind]:
            candidate = root / name
            if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
                return candidate
    where = " or ".join(str(p) for p in model_folders()[kind])
    raise AliceError(f"'{name}' is not in the {kind} model folder ({where}); check the name")


def compute_device() -> torch.device:
    if comfy_mm is not None:
        return comfy_mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if comfy_mm is not None:
        return comfy_mm.unet_offload_device()
    return torch.device("cpu")


def metadata_enabled() -> bool:
    """False when ComfyUI runs with --disable-metadata."""
    if comfy_mm is None:
        return True
    from comfy.cli_args import args

    return not args.disable_metadata


def previews_enabled() -> bool:
    """False when ComfyUI runs with --preview-method none."""
    try:
        from comfy.cli_args import args
    except ImportError:  # outside ComfyUI (or a host without its arguments): previews on
        return True
    return getattr(getattr(args, "preview_method", None), "value", "auto") != "none"


def step_progress(total: int, previewer: Previewer | None = None) -> ProgressFn | None:
    """One progress-bar tick per sampling step, with a preview image of the step's x0 estimate (ComfyUI shows it on
    the node, as its own samplers' previews: a ("JPEG", PIL image, max size) triple). ComfyUI's progress hook also
    raises its interrupt exception when the user pressed Cancel, so the bar doubles as the cancel check."""
    if comfy_utils is None:
        return None
    bar = comfy_utils.ProgressBar(total)
    show = previewer if previewer is not None and previews_enabled() else None

    def report(done: int, steps: int, x0: torch.Tensor) -> None:
        preview = None
        if show is not None:
            from PIL import Image

            preview = ("JPEG", Image.fromarray(show(x0)), PREVIEW_MAX_SIZE)
        bar.update_absolute(done, steps, preview)

    return report


def download_progress() -> ProgressCallback | None:
    """A ComfyUI progress bar per downloaded file (its hook also makes Cancel stop the transfer)."""
    if comfy_utils is None:
        return None
    bars: dict[str, object] = {}

    def report(label: str, done: int, total: int | None) -> None:
        bar = bars.setdefault(label, comfy_utils.ProgressBar(total or 0))
        bar.update_absolute(done, total)

    return report


def cancel_check() -> Callable[[], bool] | None:
    """Checked before every step; raises ComfyUI's InterruptProcessingException, which ComfyUI reports as a clean
    cancel rather than an error."""
    if comfy_mm is None:
        return None

    def should_cancel() -> bool:
        comfy_mm.throw_exception_if_processing_interrupted()
        return False

    return should_cancel


def output_location(filename_prefix: str, suffix: str) -> tuple[Path, str]:
    """A new file for `filename_prefix` ('video/alice' -> output/video/alice_00001_.mp4) and its subfolder."""
    if not filename_prefix.strip():
        raise AliceError("filename_prefix is empty; use e.g. 'video/alice'")
    if folder_paths is not None:
        # ComfyUI's own naming: %date% variables, refuses paths outside the output folder, counter past existing files.
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        return Path(folder) / f"{name}_{counter:05}_{suffix}", subfolder
    root = Path(os.environ.get("ALICE_OUTPUT_DIR") or "output").resolve()
    prefix = Path(filename_prefix)
    folder = (root / prefix.parent).resolve()
    if prefix.is_absolute() or not folder.is_relative_to(root):
        raise AliceError(f"filename_prefix '{filename_prefix}' must stay inside the output folder {root}")
    folder.mkdir(parents=True, exist_ok=True)
    subfolder = "" if folder == root else folder.relative_to(root).as_posix()
    return unique_path(folder, prefix.name, suffix), subfolder
