"""Model bundles: a folder with `model.json` naming the DiT(s), the autoencoder, the text encoder and defaults.

A bundle is how Alice ships `alice-tiny`; a single Wan checkpoint file plus a VAE and a text encoder is the other
way in (see `pipeline.load_pipeline`). `ModelDefaults` is the one place a model's defaults are read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AliceError
from .loading.output import write_text

BUNDLED_DIR = Path(__file__).parent / "bundled"
DEFAULT_MODEL = "alice-tiny"
SAMPLERS = ("rcm", "teacher")


@dataclass(frozen=True)
class ModelDefaults:
    """What a model generates when a setting is left out. The field defaults are Wan2.1 text-to-video's (832x480,
    81 frames at 16 fps, guidance and flow shift 5.0), which is what a single Wan checkpoint gets; a bundle's
    model.json `defaults` overrides any of them (alice-tiny: 32x32, 9 frames at 8 fps, guidance and shift 3.0)."""

    sampler: str | None = None   # None: the 4-step student when the model has one, else the teacher
    rcm_steps: int = 4
    teacher_steps: int = 50
    width: int = 832
    height: int = 480
    frames: int = 81
    fps: int = 16
    sigma_max: float = 80.0
    guidance: float = 5.0
    shift: float = 5.0
    negative_prompt: str = ""
    boundary: float | None = None  # two-expert models: None means the pair's own (Wan's default for its task)
    guidance_low: float | None = None  # two-expert models: the low-noise expert's guidance (None: `guidance`)

    @classmethod
    def from_dict(cls, values: dict, where: str = "defaults") -> "ModelDefaults":
        """Checked: unknown keys and values of the wrong type are errors naming the key."""
        if not isinstance(values, dict):
            raise AliceError(f"{where} must be a JSON object, got {type(values).__name__}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise AliceError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(types)}")
        for key, value in values.items():
            kind = types[key]
            ok = (value is None and "None" in kind) or (
                isinstance(value, str) if "str" in kind else
                isinstance(value, int) and not isinstance(value, bool) if kind == "int" else
                isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                raise AliceError(f"{where}.{key} must be {kind.replace(' | None', '')}, got {value!r}")
        if values.get("sampler") not in (None, *SAMPLERS):
            raise AliceError(f"{where}.sampler must be one of {', '.join(SAMPLERS)}, got {values['sampler']!r}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def steps(self, sampler: str) -> int:
        return self.rcm_steps if sampler == "rcm" else self.teacher_steps

    def sampler_for(self, samplers) -> str:
        """The default sampler among the ones a model has."""
        if self.sampler is not None:
            return self.sampler
        return "rcm" if "rcm" in samplers else next(iter(samplers), "rcm")


@dataclass
class ModelBundle:
    name: str
    folder: Path
    dits: dict[str, Path]                       # sampler name -> DiT file ("rcm": student, "teacher": teacher)
    autoencoder: dict                           # {"type": "space_to_depth", ...} or {"type": "wan_vae", "file": ...}
    text_encoder: str                           # "minilm" or a path relative to the bundle
    defaults: ModelDefaults = field(default_factory=ModelDefaults)

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
            text_encoder=spec["text_encoder"],
            defaults=ModelDefaults.from_dict(spec.get("defaults", {}), f"{spec_file}: defaults"),
        )

    def write(self, replace: bool = False) -> Path:
        """model.json, never over an existing one unless `replace` (an edit of this bundle's own spec)."""
        spec = {
            "name": self.name,
            "dits": {k: v.name for k, v in self.dits.items()},
            "autoencoder": self.autoencoder,
            "text_encoder": self.text_encoder,
            "defaults": self.defaults.to_dict(),
        }
        return write_text(self.folder / "model.json", json.dumps(spec, indent=2) + "\n", replace=replace)

    @property
    def text_encoder_source(self) -> str:
        """What `load_text_encoder` takes: "minilm", or the encoder's path inside the bundle."""
        return self.text_encoder if self.text_encoder == "minilm" else str(self.folder / self.text_encoder)


def bundled_models() -> list[str]:
    return sorted(p.parent.name for p in BUNDLED_DIR.glob("*/model.json"))


def bundled_loras() -> dict[str, Path]:
    """The example LoRAs shipped with the bundled models (`<model>/loras/*.safetensors`), by file name."""
    return {p.name: p for p in sorted(BUNDLED_DIR.glob("*/loras/*.safetensors"))}


def resolve_bundle(name_or_path: str | Path | None) -> ModelBundle | None:
    """The bundle for a bundled model name, a bundle folder or its model.json; None when the argument is a
    checkpoint file."""
    name_or_path = str(name_or_path or DEFAULT_MODEL)
    if Path(name_or_path).name == "model.json":
        name_or_path = str(Path(name_or_path).parent)
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
