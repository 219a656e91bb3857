"""Build a `WanDiT` from any supported checkpoint (file, diffusers folder, or an in-memory state dict)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig
from ..models.dit import WanDiT
from .checkpoint import read_safetensors_metadata, read_state_dict
from .dit_keys import check_state_matches, infer_dit_config, to_official_layout

# Alice's own files store their architecture in the safetensors header under this key.
CONFIG_METADATA_KEY = "alice_dit_config"


def stored_dit_config(path: Path) -> WanDiTConfig | None:
    """The config stored with the checkpoint: safetensors metadata, or a diffusers folder's config.json."""
    if path.is_file() and path.suffix == ".safetensors":
        meta = read_safetensors_metadata(path)
        if CONFIG_METADATA_KEY in meta:
            return WanDiTConfig.from_dict(json.loads(meta[CONFIG_METADATA_KEY]))
    for cfg_file in (path / "config.json", path / "transformer" / "config.json") if path.is_dir() else ():
        if cfg_file.exists():
            d = json.loads(cfg_file.read_text())
            heads = d.get("num_attention_heads")
            return WanDiTConfig(
                dim=heads * d["attention_head_dim"], ffn_dim=d["ffn_dim"], num_heads=heads, num_layers=d["num_layers"],
                in_dim=d["in_channels"], out_dim=d["out_channels"], text_dim=d["text_dim"], freq_dim=d["freq_dim"],
                patch_size=tuple(d["patch_size"]), eps=d.get("eps", 1e-6), qk_norm=d.get("qk_norm") is not None,
                cross_attn_norm=d.get("cross_attn_norm", True),
            )
    return None


def build_dit(
    state: dict[str, torch.Tensor],
    config: WanDiTConfig | None = None,
    dtype: torch.dtype = torch.float32,
    source: str = "state dict",
    ops=None,
) -> WanDiT:
    """A WanDiT holding exactly `state` (any supported layout), cast to `dtype`."""
    state = to_official_layout(state)
    config = config or infer_dit_config(state)
    with torch.device("meta"):
        model = WanDiT(config) if ops is None else WanDiT(config, ops)
    check_state_matches(state, model.state_dict(), source)
    # assign=True adopts the loaded tensors instead of copying into freshly allocated ones.
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


def load_dit(path: str | Path, config: WanDiTConfig | None = None, dtype: torch.dtype = torch.float32) -> WanDiT:
    """Load a Wan DiT from an official / rCM / diffusers checkpoint or an Alice safetensors file."""
    path = Path(path).expanduser()
    state = read_state_dict(path)
    config = config or stored_dit_config(path)
    try:
        return build_dit(state, config, dtype, source=str(path))
    except AliceError as exc:
        msg = str(exc)
        raise AliceError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
