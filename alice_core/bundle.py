"""Model bundles: a folder with `model.json` naming the DiT(s), the autoencoder, the text encoder and defaults.

A bundle is how Alice ships `alice-tiny`; a single Wan checkpoint file plus a VAE and a text encoder is the other
way in (see `load_pipeline`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AliceError

BUNDLED_DIR = Path(__file__).parent / "bundled"
DEFAULT_MODEL = "alice-tiny"
SAMPLERS = ("rcm", "teacher")


@dataclass
class ModelBundle:
    name: str
    folder: Path
    dits: dict[str, Path]                       # sampler name -> DiT file ("rcm": student, "teacher": teacher)
    autoencoder: dict                           # {"type": "space_to_depth", ...} or {"type": "wan_vae", "file": ...}
    text_encoder: str                           # "minilm" or a path relative to the bundle
    defaults: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> "ModelBundle":
        folder = Path(folder)
        spec_file = folder / "model.json"
        try:
            spec = json.loads(spec_file.read_text())
        except FileNotFoundError:
            raise AliceError(f"{folder}: not a model bundle (no model.json)") from None
        except json.JSONDecodeError as exc:
            raise AliceError(f"{spec_file}: invalid JSON ({exc})") from None
        for key in ("name", "dits", "autoencoder", "text_encoder"):
            if key not in spec:
                raise AliceError(f"{spec_file}: missing key {key!r}")
        unknown = set(spec["dits"]) - set(SAMPLERS)
        if unknown:
            raise AliceError(f"{spec_file}: 'dits' keys must be among {SAMPLERS}, found {sorted(unknown)}")
        dits = {k: folder / v for k, v in spec["dits"].items()}
        for sampler, path in dits.items():
            if not path.exists():
                raise AliceError(f"{spec_file}: dits.{sampler} names {path.name}, which is not in {folder}")
        return cls(
            name=spec["name"], folder=folder, dits=dits, autoencoder=spec["autoencoder"],
            text_encoder=spec["text_encoder"], defaults=spec.get("defaults", {}),
        )

    def write(self) -> Path:
        spec = {
            "name": self.name,
            "dits": {k: v.name for k, v in self.dits.items()},
            "autoencoder": self.autoencoder,
            "text_encoder": self.text_encoder,
            "defaults": self.defaults,
        }
        path = self.folder / "model.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
        tmp.replace(path)
        return path


def bundled_models() -> list[str]:
    return sorted(p.parent.name for p in BUNDLED_DIR.glob("*/model.json"))


def bundled_loras() -> dict[str, Path]:
    """The example LoRAs shipped with the bundled models (`<model>/loras/*.safetensors`), by file name."""
    return {p.name: p for p in sorted(BUNDLED_DIR.glob("*/loras/*.safetensors"))}


def resolve_bundle(name_or_path: str | None) -> ModelBundle | None:
    """The bundle for a bundled model name or a bundle folder; None when the argument is a checkpoint file."""
    name_or_path = name_or_path or DEFAULT_MODEL
    if (BUNDLED_DIR / name_or_path / "model.json").exists():
        return ModelBundle.read(BUNDLED_DIR / name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "model.json").exists():
        return ModelBundle.read(path)
    if path.exists():
        return None
    if name_or_path == DEFAULT_MODEL:
        raise AliceError(
            f"the bundled model {DEFAULT_MODEL!r} is not installed in {BUNDLED_DIR}; reinstall Alice from a full "
            "checkout or pass --model PATH to a checkpoint"
        )
    raise AliceError(
        f"model {name_or_path!r} not found: pass a bundled model name ({', '.join(bundled_models()) or 'none installed'}), "
        "a model bundle folder, or a checkpoint file"
    )
