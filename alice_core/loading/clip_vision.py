"""Loading the CLIP vision encoder of Wan2.1 I2V: a transformers folder (`config.json` + weights), a single
safetensors file in transformers' key names, as ComfyUI ships it (`clip_vision_h.safetensors`), or Wan's own
open-clip checkpoint (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, `visual.*` keys; its text tower
is not needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import AliceError
from ..models.clip_vision import VIT_H_14, ClipImageEncoder

PREFIX = "vision_model."  # ComfyUI's file and transformers 4's names; transformers 5's CLIPVisionModel drops it


OPEN_CLIP_PREFIX = "visual."
# Wan's open-clip VisionTransformer names (wan/modules/clip.py) -> transformers' CLIPVisionModel names
OPEN_CLIP_NAMES = {"patch_embedding.weight": "embeddings.patch_embedding.weight", "pre_norm.": "pre_layrnorm.",
                   "post_norm.": "post_layernorm."}
OPEN_CLIP_BLOCK_NAMES = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "attn.proj.": "self_attn.out_proj.",
                         "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."}


def _from_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's `visual.*` tensors in transformers' names: the class and position embeddings lose their batch axes,
    each block's fused `to_qkv` (rows q, k, v, as Wan's view(b, s, 3, heads, head_dim) reads them) splits in three;
    the projection `head` and the text tower are dropped."""
    converted = {}
    for key, value in state.items():
        if not key.startswith(OPEN_CLIP_PREFIX):
            continue
        name = key[len(OPEN_CLIP_PREFIX):]
        if name == "cls_embedding":
            converted["embeddings.class_embedding"] = value.reshape(-1)
        elif name == "pos_embedding":
            converted["embeddings.position_embedding.weight"] = value.reshape(-1, value.shape[-1])
        elif name.startswith("transformer."):
            _, index, rest = name.split(".", 2)
            block = f"encoder.layers.{index}."
            if rest.startswith("attn.to_qkv."):
                kind = rest.rsplit(".", 1)[1]  # weight or bias
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    converted[f"{block}self_attn.{part}_proj.{kind}"] = chunk
                continue
            old = next((o for o in OPEN_CLIP_BLOCK_NAMES if rest.startswith(o)), None)
            if old is not None:
                converted[block + OPEN_CLIP_BLOCK_NAMES[old] + rest[len(old):]] = value
        else:
            old = next((o for o in OPEN_CLIP_NAMES if name.startswith(o)), None)
            if old is not None:
                converted[OPEN_CLIP_NAMES[old] + name[len(old):]] = value
    return converted


def _vision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's tensors without the `vision_model.` prefix (projection and text keys dropped), Wan's
    open-clip layout converted."""
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in state):
        return _from_open_clip(state)
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    return {k: v for k, v in state.items() if k.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm."))}


def _config_from_shapes(state: dict[str, torch.Tensor]):
    from transformers import CLIPVisionConfig

    try:
        patch = state["embeddings.patch_embedding.weight"]
        positions = state["embeddings.position_embedding.weight"].shape[0]
        fc1 = state["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise AliceError(
            f"not a CLIP vision checkpoint: missing {exc.args[0]!r} (expected transformers' `vision_model.*` keys, "
            "e.g. ComfyUI's clip_vision_h.safetensors, or Wan's open-clip `visual.*` .pth)"
        ) from None
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    # ViT-H uses 80-wide heads, the smaller CLIPs 64
    heads = hidden // 80 if hidden % 80 == 0 else hidden // 64
    return CLIPVisionConfig(**{
        **VIT_H_14, "hidden_size": hidden, "intermediate_size": fc1.shape[0], "num_hidden_layers": layers,
        "num_attention_heads": heads, "patch_size": patch_size, "image_size": round((positions - 1) ** 0.5) * patch_size,
    })


def load_clip_vision(path: str | Path, dtype: torch.dtype = torch.float32) -> ClipImageEncoder:
    """The CLIP image encoder from a transformers folder, a `vision_model.*` safetensors file or Wan's open-clip
    .pth."""
    from transformers import CLIPVisionModel

    from .checkpoint import read_state_dict

    path = Path(path).expanduser()
    if not path.exists():
        raise AliceError(f"CLIP vision encoder not found: {path}")
    if path.is_dir():
        return ClipImageEncoder(CLIPVisionModel.from_pretrained(path, torch_dtype=dtype))
    state = _vision_keys(read_state_dict(path))
    try:
        config = _config_from_shapes(state)
    except AliceError as exc:
        raise AliceError(f"{path}: {exc}") from None
    model = CLIPVisionModel(config)
    if all(k.startswith(PREFIX) for k in model.state_dict()):  # transformers 4 keeps the prefix
        state = {PREFIX + k: v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "position_ids" not in k]
    if missing or result.unexpected_keys:
        raise AliceError(
            f"{path}: does not fit a CLIP vision model ({config.num_hidden_layers} layers, width "
            f"{config.hidden_size}): missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return ClipImageEncoder(model.to(dtype))
