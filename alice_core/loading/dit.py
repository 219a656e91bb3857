"""Build a `WanDiT` from any supported checkpoint (file, diffusers folder, or an in-memory state dict)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from .checkpoint import read_safetensors_metadata

# Alice's own files store their architecture in the safetensors header under this key.
CONFIG_METADATA_KEY = "alice_dit_config"


def stored_dit_config(path: Path) -> WanDiTConfig | None:
    """The config stored with the checkpoint: safetensors metadata, or a diffusers folder's config.json."""
    if path.is_file() and path.suffix == ".safetensors":
        return config_from_metadata(read_safetensors_metadata(path), path)
    for cfg_file in (path / "config.json", path / "transformer" / "config.json") if path.is_dir() else ():
        if cfg_file.exists():
            return _diffusers_config(cfg_file)
    return None


def _diffusers_config(cfg_file: Path) -> WanDiTConfig | None:
    try:
        d = json.loads(cfg_file.read_text())
        if "attention_head_dim" not in d:
            # official Wan2.2 folders' config.json (WanModel arguments): its model_type "i2v" does not tell
            # Wan2.1's CLIP layers from Wan2.2's none, so the shapes decide (head_dim 128 gives num_heads)
            return None
        heads = d.get("num_attention_heads")
        return WanDiTConfig(
            dim=heads * d["attention_head_dim"], ffn_dim=d["ffn_dim"], num_heads=heads, num_layers=d["num_layers"],
            in_dim=d["in_channels"], out_dim=d["out_channels"], text_dim=d["text_dim"], freq_dim=d["freq_dim"],
            patch_size=tuple(d["patch_size"]), eps=d.get("eps", 1e-6), qk_norm=d.get("qk_norm") is not None,
            cross_attn_norm=d.get("cross_attn_norm", True), text_len=d.get("text_len", 512),
            image_dim=d.get("image_dim"),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, AliceError) as exc:
        raise AliceError(f"{cfg_file}: not a usable diffusers WanTransformer3DModel config "
                         f"({type(exc).__name__}: {exc}); restore it from the model's original files") from None


def config_from_metadata(metadata: dict[str, str], source: Path) -> WanDiTConfig | None:
    """The architecture Alice stores in a safetensors header, or None; AliceError when it is unreadable."""
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        return WanDiTConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    except (json.JSONDecodeError, AliceError) as exc:
        raise AliceError(f"{source}: its {CONFIG_METADATA_KEY!r} metadata is unusable ({exc}); the file's header "
                         "is damaged: re-export the file from its source") from None


def build_dit(
    state: dict[str, torch.Tensor],
    config: WanDiTConfig | None = None,
    dtype: torch.dtype = torch.float32,
    source: str = "state dict",
    ops=None,
) -> WanDiT:
    """A WanDiT holding exactly `state` (any supported layout, see `formats.py`), cast to `dtype`."""
    from .formats import convert_state_dict
    from .quant import fill_module

    official, fmt = convert_state_dict(state, config, source)
    with torch.device("meta"):
        model = WanDiT(fmt.config) if ops is None else WanDiT(fmt.config, ops)
    fill_module(model, ((k, lambda v=v: v) for k, v in official.items()), dtype, device=None, source=source)
    return model.eval().requires_grad_(False)


def load_dit(
    path: str | Path,
    config: WanDiTConfig | None = None,
    dtype: torch.dtype = torch.float32,
    precision: str | None = None,
    device: torch.device | str = "cpu",
) -> WanDiT:
    """Load a Wan DiT from an official / rCM / TurboDiffusion / diffusers / ComfyUI checkpoint or an Alice file.

    `precision` (fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2, nf4) overrides `dtype`. Tensors are read one at a time
    and converted (quantised) as they arrive, straight onto `device`.
    """
    from .quant import precision_of_dtype, stream_dit

    path = Path(path).expanduser()
    try:
        return stream_dit(path, precision or precision_of_dtype(dtype), config, device)
    except AliceError as exc:
        msg = str(exc)
        raise AliceError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
