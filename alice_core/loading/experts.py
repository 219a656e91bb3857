"""Wan2.2 A14B expert pairs: where the high- and low-noise DiTs of a model are, and loading both alike.

Layouts of a pair:
  official Wan2.2 folder   `high_noise_model/` and `low_noise_model/`, each sharded safetensors + index json
  diffusers pipeline       `transformer/` (high noise) and `transformer_2/` (low noise), `boundary_ratio` in
                           `model_index.json`
  two single files         rCM merged `.pt`, TurboWan2.2 `.pth` (also `-quant`), ComfyUI repackaged high/low:
                           given as `--model HIGH --low-noise-model LOW`
Both experts load with the same precision (fp8 / NF4 quantise both) and must have the same architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from ..sampling import Experts

# Wan2.2's boundaries in its 0..1 timestep (wan/configs): T2V-A14B 0.875, I2V-A14B 0.9.
T2V_BOUNDARY = 0.875
I2V_BOUNDARY = 0.9
OFFICIAL_FOLDERS = ("high_noise_model", "low_noise_model")
DIFFUSERS_FOLDERS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class ExpertFiles:
    high: Path
    low: Path
    boundary: float | None  # None: the file does not say; Wan's default for the task applies


def find_expert_pair(path: str | Path) -> ExpertFiles | None:
    """The two experts inside an official Wan2.2 or diffusers pipeline folder, or None when `path` is not one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    if all((path / f).is_dir() for f in OFFICIAL_FOLDERS):
        return ExpertFiles(path / OFFICIAL_FOLDERS[0], path / OFFICIAL_FOLDERS[1], None)
    index = path / "model_index.json"
    if index.is_file() and (path / DIFFUSERS_FOLDERS[1]).is_dir():
        try:
            boundary = json.loads(index.read_text()).get("boundary_ratio")
        except json.JSONDecodeError as exc:
            raise AliceError(f"{index}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return ExpertFiles(path / DIFFUSERS_FOLDERS[0], path / DIFFUSERS_FOLDERS[1], boundary)
    return None


def default_boundary(config: WanDiTConfig) -> float:
    """Wan's boundary for a pair of this architecture: 0.9 for image-to-video (in_dim > out_dim), else 0.875."""
    return I2V_BOUNDARY if config.in_dim > config.out_dim else T2V_BOUNDARY


def default_teacher_settings(config: WanDiTConfig) -> dict[str, float]:
    """Wan2.2's teacher settings for a pair of this architecture (wan/configs `sample_shift`, `sample_guide_scale`
    given there as (low, high)): T2V-A14B shift 12, guidance 4 high / 3 low; I2V-A14B shift 5, guidance 3.5."""
    if config.in_dim > config.out_dim:
        return {"shift": 5.0, "guidance": 3.5, "guidance_low": 3.5}
    return {"shift": 12.0, "guidance": 4.0, "guidance_low": 3.0}


PAIR_FIX = "pass the two experts of one Wan2.2 model"
CLI_PAIR_FIX = f"{PAIR_FIX} (--model HIGH --low-noise-model LOW)"
NODE_PAIR_FIX = "choose the two experts of one Wan2.2 model in inputs 'model_name' and 'low_noise_model_name'"


def check_pair_files(high: str | Path, low: str | Path, fix: str = PAIR_FIX) -> WanDiTConfig:
    """The pair's architecture, read from the two headers alone, so a mismatched pair fails before any weight is
    read; `fix` says how to give a matching pair in the caller's words (a CLI flag, a node input)."""
    from .formats import inspect_checkpoint

    high_cfg, low_cfg = inspect_checkpoint(high).config, inspect_checkpoint(low).config
    differ = [f"{k} {a} vs {b}" for k, a in high_cfg.to_dict().items() if a != (b := low_cfg.to_dict()[k])]
    if differ:
        raise AliceError(
            f"the high-noise model {high} and the low-noise model {low} have different architectures "
            f"({', '.join(differ[:3])}); {fix}"
        )
    return high_cfg


def load_expert_pair(
    high: str | Path,
    low: str | Path,
    precision: str = "bf16",
    boundary: float | None = None,
    device: torch.device | str = "cpu",
) -> Experts[WanDiT]:
    """Both experts, each read and converted (quantised) tensor by tensor like any single DiT; `boundary` None
    means Wan's default for the pair's task."""
    from .dit import load_dit

    high_cfg = check_pair_files(high, low)
    boundary = default_boundary(high_cfg) if boundary is None else boundary
    pair_boundary = Experts(None, None, boundary).boundary  # validates before the long loads
    return Experts(
        load_dit(high, precision=precision, device=device), load_dit(low, precision=precision, device=device),
        pair_boundary,
    )
