"""`alice download NAME [--folder DIR]`, the terminal progress bars for downloads, and the hook `alice generate
--download` uses to turn a catalogue model name into local files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import AliceError
from ..hub import (
    Catalogue, ProgressCallback, ensure_files, find_local, load_catalogue, resolve_catalogue_model, standalone_folders,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("download", help="download a catalogue model or file from the Hugging Face Hub")
    p.add_argument("name", nargs="?", help="catalogue model or file name (see --list)")
    p.add_argument(
        "--folder", default=None,
        help="models root holding diffusion_models/, text_encoders/, vae/ and loras/ (e.g. ComfyUI/models); "
             "default: $ALICE_HOME or ~/.cache/alice",
    )
    p.add_argument("--list", action="store_true", help="list the catalogue, where each file goes and what is present")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    catalogue = load_catalogue()
    folders = standalone_folders(args.folder)
    if args.list or not args.name:
        print(format_catalogue(catalogue, folders))
        return 0
    with tqdm_progress() as progress:
        paths = ensure_files([args.name], download=True, progress=progress, folders=folders, catalogue=catalogue)
    for path in paths.values():
        print(path)
    return 0


def format_catalogue(catalogue: Catalogue, folders: dict[str, list[Path]] | None = None) -> str:
    """Models, then files with their size and whether they are present in `folders`."""
    lines = ["models:"]
    for model in catalogue.models.values():
        lines.append(f"  {model.name}: {model.description}")
    lines.append("files:")
    for file in catalogue.files.values():
        local = find_local(file, folders)
        state = f"present at {local}" if local else "missing"
        lines.append(f"  {file.name} ({file.approx_size or 'size unknown'}, {file.repo_id}/{file.filename}): {state}")
    return "\n".join(lines)


@contextmanager
def tqdm_progress() -> Iterator[ProgressCallback]:
    """A download progress callback drawing one tqdm bar per file on stderr."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(label: str, done: int, total: int | None) -> None:
        bar = bars.get(label)
        if bar is None:
            bars[label] = tqdm(total=total, initial=done, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                               file=sys.stderr)
            return
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


def catalogue_pipeline_args(model: str | None, download: bool) -> dict[str, str] | None:
    """For `alice generate --model NAME [--download]`: load_pipeline's {"model", "vae", "text_encoder"} paths when
    NAME is a catalogue model (fetched first if `download`), else None (a bundle or checkpoint path)."""
    catalogue = load_catalogue()
    if model not in catalogue.models:
        if download:
            raise AliceError(f"--download fetches catalogue models only ({', '.join(catalogue.models)}); "
                             f"{model or 'the default model'} is not one")
        return None
    if catalogue.models[model].comfyui_only:
        usable = [m.name for m in catalogue.models.values() if not m.comfyui_only]
        raise AliceError(f"{model} holds files for ComfyUI's own loaders; use {' or '.join(usable)} with the CLI")
    with tqdm_progress() as progress:
        paths = resolve_catalogue_model(model, download=download, progress=progress, catalogue=catalogue)
    return {"model": str(paths["dit"]), "vae": str(paths["vae"]), "text_encoder": str(paths["text_encoder"]),
            "low_noise_model": str(paths["dit_low"]) if "dit_low" in paths else None,
            "clip_vision": str(paths["clip_vision"]) if "clip_vision" in paths else None,
            "lora": str(paths["lora"]) if "lora" in paths else None,
            "defaults": catalogue.models[model].defaults}
