"""DiT key names (diffusers <-> official Wan), the architecture from an official-layout state dict's shapes, and
the check that a state dict fits an architecture. Layout detection and conversion: formats.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig

# diffusers -> official Wan, applied in order to each key (block-level names first).
_DIFFUSERS_TO_OFFICIAL: list[tuple[str, str]] = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    # Wan2.1 I2V: the CLIP-token keys/values and the image projection.
    (r"^(blocks\.\d+)\.attn2\.add_([kv])_proj\.", r"\1.cross_attn.\2_img."),
    (r"^(blocks\.\d+)\.attn2\.norm_added_k\.", r"\1.cross_attn.norm_k_img."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    # diffusers swaps norm2/norm3: its affine cross-attention norm is `norm2`.
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
]
_COMPILED = [(re.compile(p), r) for p, r in _DIFFUSERS_TO_OFFICIAL]

# official Wan -> diffusers, the inverse of the table above (used to write diffusers folders and to match LoRA keys).
_OFFICIAL_TO_DIFFUSERS: list[tuple[str, str]] = [
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
    (r"^(blocks\.\d+)\.self_attn\.o\.", r"\1.attn1.to_out.0."),
    (r"^(blocks\.\d+)\.self_attn\.([qkv])\.", r"\1.attn1.to_\2."),
    (r"^(blocks\.\d+)\.self_attn\.norm_([qk])\.", r"\1.attn1.norm_\2."),
    (r"^(blocks\.\d+)\.cross_attn\.o\.", r"\1.attn2.to_out.0."),
    (r"^(blocks\.\d+)\.cross_attn\.([qkv])\.", r"\1.attn2.to_\2."),
    (r"^(blocks\.\d+)\.cross_attn\.norm_([qk])\.", r"\1.attn2.norm_\2."),
    (r"^(blocks\.\d+)\.cross_attn\.([kv])_img\.", r"\1.attn2.add_\2_proj."),
    (r"^(blocks\.\d+)\.cross_attn\.norm_k_img\.", r"\1.attn2.norm_added_k."),
    (r"^img_emb\.proj\.0\.", "condition_embedder.image_embedder.norm1."),
    (r"^img_emb\.proj\.1\.", "condition_embedder.image_embedder.ff.net.0.proj."),
    (r"^img_emb\.proj\.3\.", "condition_embedder.image_embedder.ff.net.2."),
    (r"^img_emb\.proj\.4\.", "condition_embedder.image_embedder.norm2."),
    (r"^(blocks\.\d+)\.norm3\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.ffn\.0\.", r"\1.ffn.net.0.proj."),
    (r"^(blocks\.\d+)\.ffn\.2\.", r"\1.ffn.net.2."),
]
_COMPILED_INVERSE = [(re.compile(p), r) for p, r in _OFFICIAL_TO_DIFFUSERS]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def official_key_from_diffusers(key: str) -> str:
    """`blocks.0.attn1.to_q.weight` -> `blocks.0.self_attn.q.weight`; keys without a rule are returned unchanged."""
    return _rename(key, _COMPILED)


def diffusers_key_from_official(key: str) -> str:
    """`blocks.0.self_attn.q.weight` -> `blocks.0.attn1.to_q.weight`; keys without a rule are returned unchanged."""
    return _rename(key, _COMPILED_INVERSE)


def infer_dit_config(state: dict[str, torch.Tensor], num_heads: int | None = None, text_len: int = 512) -> WanDiTConfig:
    """Architecture from the shapes of an official-layout state dict. Real Wan models use head_dim 128, which
    gives num_heads when it is not stored with the file."""
    try:
        dim = state["head.modulation"].shape[-1]
        patch_w = state["patch_embedding.weight"]
        in_dim, patch_size = patch_w.shape[1], tuple(patch_w.shape[2:])
        ffn_dim = state["blocks.0.ffn.0.weight"].shape[0]
        text_dim = state["text_embedding.0.weight"].shape[1]
        freq_dim = state["time_embedding.0.weight"].shape[1]
        out_dim = state["head.head.weight"].shape[0] // math.prod(patch_size)
        image_dim = state["img_emb.proj.1.weight"].shape[1] if "img_emb.proj.1.weight" in state else None
    except KeyError as exc:
        raise AliceError(f"Wan DiT checkpoint is missing the key {exc.args[0]!r}") from None
    num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if num_heads is None:
        if dim % 128:
            raise AliceError(f"cannot infer num_heads for dim {dim} (not a multiple of 128); store a config with the file")
        num_heads = dim // 128
    return WanDiTConfig(
        dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=num_layers, in_dim=in_dim, out_dim=out_dim,
        text_dim=text_dim, text_len=text_len, freq_dim=freq_dim, patch_size=patch_size,
        qk_norm="blocks.0.self_attn.norm_q.weight" in state, cross_attn_norm="blocks.0.norm3.weight" in state,
        image_dim=image_dim,
    )


def check_state_matches(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one clear error listing missing / unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})")
        raise AliceError(f"{source}: checkpoint does not fit the model architecture: " + "; ".join(parts))
