"""The model catalogue (alice_core/catalogue.json): the Hub files Alice knows, the folder each belongs in, and the
models made of them (files by role, plus each model's preset). Parsing only; `hub.py` finds and downloads the files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import ModelDefaults
from .errors import AliceError

FOLDER_KINDS = ("diffusion_models", "text_encoders", "vae", "loras", "clip_vision")  # ComfyUI's folder names
# dit_low: a Wan2.2 pair's low-noise expert; clip_vision: the CLIP image encoder a Wan2.1 I2V model needs; lora: a
# LoRA applied (strength 1) on load, which makes its base model the few-step one (lightx2v)
MODEL_ROLES = ("dit", "dit_low", "vae", "text_encoder", "clip_vision", "lora")
PRESET_KEYS = tuple(f.name for f in dataclasses.fields(ModelDefaults))  # a preset is a model's typed defaults
CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_OPTIONAL_FILE_KEYS = ("revision", "local_path", "size", "sha256", "approx_size", "note")


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub itself reads it once, at import), else the client's endpoint."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class CatalogueFile:
    name: str                      # catalogue key
    repo_id: str
    filename: str                  # path inside the repository
    folder: str                    # one of FOLDER_KINDS
    revision: str = "main"
    local_path: str = ""           # path inside the folder; default: the file's base name
    size: int | None = None        # bytes, where confirmed
    sha256: str | None = None      # where confirmed; otherwise the Hub's LFS ETag is used
    approx_size: str | None = None
    note: str = ""

    @property
    def relative_path(self) -> str:
        return self.local_path or self.filename.rsplit("/", 1)[-1]

    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.filename, revision=self.revision, endpoint=hub_endpoint())


@dataclass(frozen=True)
class CatalogueModel:
    """A whole model: the files it needs by role, so one download fetches everything."""

    name: str
    description: str
    roles: dict[str, str]                        # a MODEL_ROLES name -> file entry name
    extra_files: tuple[str, ...] = ()            # needed beside the role files (the umT5 tokenizer)
    comfyui_only: bool = False                   # its files load only through ComfyUI's own loaders
    defaults: dict = field(default_factory=dict)  # the model's preset: steps, sigma_max, boundary, size, frames, fps

    @property
    def file_names(self) -> list[str]:
        return [*self.roles.values(), *self.extra_files]


@dataclass(frozen=True)
class Catalogue:
    files: dict[str, CatalogueFile]
    models: dict[str, CatalogueModel] = field(default_factory=dict)

    def expand(self, names: Iterable[str]) -> list[CatalogueFile]:
        """Model and file names -> the files they stand for, each once, in order."""
        out: dict[str, CatalogueFile] = {}
        for name in names:
            if name in self.models:
                for file_name in self.models[name].file_names:
                    out.setdefault(file_name, self.files[file_name])
            elif name in self.files:
                out.setdefault(name, self.files[name])
            else:
                raise AliceError(
                    f"{name!r} is not in the model catalogue; models: {', '.join(self.models) or 'none'}; "
                    f"files: {', '.join(self.files)} (see `alice download --list`)"
                )
        return list(out.values())


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The packaged catalogue (alice_core/catalogue.json), or another file of the same form."""
    path = Path(path) if path else CATALOGUE_PATH
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise AliceError(f"model catalogue {path} not found; reinstall alice-video") from None
    except json.JSONDecodeError as exc:
        raise AliceError(f"{path}: invalid JSON ({exc})") from None
    files = {name: _parse_file(path, name, entry) for name, entry in spec.get("files", {}).items()}
    models = {name: _parse_model(path, name, entry, files) for name, entry in spec.get("models", {}).items()}
    clash = sorted(files.keys() & models.keys())
    if clash:
        raise AliceError(f"{path}: names used for both a file and a model: {', '.join(clash)}; rename one")
    return Catalogue(files, models)


def _parse_file(path: Path, name: str, entry: dict) -> CatalogueFile:
    where = f"{path}: files.{name}"
    missing = [k for k in ("repo_id", "filename", "folder") if not entry.get(k)]
    if missing:
        raise AliceError(f"{where} lacks {', '.join(missing)}")
    if entry["folder"] not in FOLDER_KINDS:
        raise AliceError(f"{where}.folder is {entry['folder']!r}; use one of {', '.join(FOLDER_KINDS)}")
    sha256 = entry.get("sha256")
    if sha256 is not None and not SHA256_HEX.fullmatch(sha256):
        raise AliceError(f"{where}.sha256 must be 64 lower-case hex digits or null")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise AliceError(f"{where}.size must be a positive number of bytes or null")
    local_path = entry.get("local_path") or ""
    if Path(local_path).is_absolute() or ".." in Path(local_path).parts:
        raise AliceError(f"{where}.local_path must be a relative path inside its folder")
    optional = {k: entry[k] for k in _OPTIONAL_FILE_KEYS if entry.get(k) is not None}
    return CatalogueFile(name=name, repo_id=entry["repo_id"], filename=entry["filename"], folder=entry["folder"],
                         **optional)


def _parse_model(path: Path, name: str, entry: dict, files: Mapping[str, CatalogueFile]) -> CatalogueModel:
    roles = dict(entry.get("files", {}))
    extra = tuple(entry.get("extra_files", ()))
    unknown = [f for f in [*roles.values(), *extra] if f not in files]
    if not roles or unknown:
        listed = ", ".join(unknown) or "none given"
        raise AliceError(f"{path}: models.{name} must name catalogue files; unknown: {listed}")
    unknown_roles = sorted(set(roles) - set(MODEL_ROLES))
    unknown_defaults = sorted(set(entry.get("defaults", {})) - set(PRESET_KEYS))
    if unknown_roles or unknown_defaults:
        raise AliceError(
            f"{path}: models.{name}: unknown roles {unknown_roles} / defaults {unknown_defaults}; roles are "
            f"{', '.join(MODEL_ROLES)}, defaults {', '.join(PRESET_KEYS)}"
        )
    return CatalogueModel(name=name, description=entry.get("description", ""), roles=roles, extra_files=extra,
                          comfyui_only=bool(entry.get("comfyui_only", False)), defaults=dict(entry.get("defaults", {})))
