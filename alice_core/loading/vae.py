"""Wan VAE state-dict layouts: detection, diffusers <-> official Wan naming, architecture from shapes, loading.

Alice's `WanVAE` uses the official Wan names (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth`, ComfyUI). diffusers'
`AutoencoderKLWan` renames the blocks; for Wan2.1 it groups the decoder's flat `upsamples` list into `up_blocks`,
for Wan2.2 (residual stages) both sides are already grouped per stage. The maps below undo that. Both directions
read the number of residual blocks per stage, and which of the two VAEs it is, from the keys themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import WAN22_VAE, WanVAEConfig
from ..models.interfaces import VideoAutoencoder
from ..models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig
from ..models.vae import WanVAE
from .checkpoint import read_state_dict

# Inside a residual block: diffusers name -> official name (the official block is one nn.Sequential).
_RESNET_TO_OFFICIAL = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_OFFICIAL.items()}
# Directly under `encoder.` / `decoder.`, and at the top level.
_SIDE_TO_OFFICIAL = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
_SIDE_TO_DIFFUSERS = {v: k for k, v in _SIDE_TO_OFFICIAL.items()}
_TOP_TO_OFFICIAL = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_TOP_TO_DIFFUSERS = {v: k for k, v in _TOP_TO_OFFICIAL.items()}


def detect_vae_layout(state: Mapping[str, torch.Tensor]) -> str:
    """'official' (Wan2.1_VAE.pth / ComfyUI naming) or 'diffusers' (AutoencoderKLWan); raises if neither."""
    if "encoder.conv1.weight" in state and "decoder.conv1.weight" in state:
        return "official"
    if "encoder.conv_in.weight" in state and "decoder.conv_in.weight" in state:
        return "diffusers"
    raise AliceError(
        "not a Wan VAE checkpoint: expected `encoder.conv1.weight` (official Wan) or `encoder.conv_in.weight` "
        f"(diffusers; pass the pipeline's vae/ folder or file); found keys like {sorted(state)[:5]}"
    )


def _num_res_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Residual blocks per encoder stage: the flat index of the first down-sampler under `prefix`."""
    blocks = [(k[len(prefix) :].split(".")[0], k) for k in state if k.startswith(prefix)]
    indices = {int(i) for i, _ in blocks if i.isdigit()}
    resamplers = sorted(int(i) for i, k in blocks if i.isdigit() and ".resample." in k)
    if not indices:
        raise AliceError(f"Wan VAE checkpoint has no `{prefix}*` keys; the encoder is missing")
    return resamplers[0] if resamplers else len(indices)


def _join(*parts: object) -> str:
    return ".".join(str(p) for p in parts if p != "")


def _resnet_tail(tail: list[str], table: dict[str, str]) -> str:
    """Rename the part of a key below a block; names in `table` span one dotted part or two (`residual.0`)."""
    for width in (2, 1):
        head = ".".join(tail[:width])
        if head in table:
            return _join(table[head], *tail[width:])
    return ".".join(tail)  # a resampler's `resample.1.*` / `time_conv.*` keep their names


def _is_residual(state: Mapping[str, torch.Tensor]) -> bool:
    """Wan2.2's residual stages: `downsamples.{i}.downsamples.{j}` (official), `down_blocks.{i}.resnets` (diffusers)."""
    return any(
        k.startswith(("encoder.downsamples.", "encoder.down_blocks.")) and k.split(".")[3] in ("downsamples", "resnets")
        for k in state if k.count(".") > 3
    )


def _diffusers_key_to_official(key: str, res_blocks: int, residual: bool = False) -> str:
    parts = key.split(".")
    if parts[0] in _TOP_TO_OFFICIAL:
        return _join(_TOP_TO_OFFICIAL[parts[0]], *parts[1:])
    side, rest = parts[0], parts[1:]
    if not rest or side not in ("encoder", "decoder"):
        return key
    if rest[0] in _SIDE_TO_OFFICIAL:
        return _join(side, _SIDE_TO_OFFICIAL[rest[0]], *rest[1:])
    if rest[0] == "mid_block" and len(rest) > 3:  # resnets.0, attentions.0, resnets.1 -> middle.0, 1, 2
        kind, i, tail = rest[1], int(rest[2]), rest[3:]
        if kind == "attentions":
            return _join(side, "middle", 1, *tail)
        return _join(side, "middle", 2 * i, _resnet_tail(tail, _RESNET_TO_OFFICIAL))
    if residual and rest[0] in ("down_blocks", "up_blocks") and len(rest) > 3:
        stage, inner = ("downsamples", "downsampler") if rest[0] == "down_blocks" else ("upsamples", "upsampler")
        if rest[2] == "resnets":
            return _join(side, stage, rest[1], stage, rest[3], _resnet_tail(rest[4:], _RESNET_TO_OFFICIAL))
        if rest[2] == inner:  # after the stage's residual blocks: res_blocks of them down, res_blocks + 1 up
            return _join(side, stage, rest[1], stage, res_blocks + (stage == "upsamples"), *rest[3:])
    if rest[0] == "down_blocks" and len(rest) > 2:
        return _join(side, "downsamples", rest[1], _resnet_tail(rest[2:], _RESNET_TO_OFFICIAL))
    if rest[0] == "up_blocks" and len(rest) > 4:
        # stage s holds res_blocks + 1 residual blocks, then (except the last stage) one up-sampler
        first = int(rest[1]) * (res_blocks + 2)
        if rest[2] == "resnets":
            return _join(side, "upsamples", first + int(rest[3]), _resnet_tail(rest[4:], _RESNET_TO_OFFICIAL))
        return _join(side, "upsamples", first + res_blocks + 1, *rest[4:])
    return key


def _official_key_to_diffusers(key: str, res_blocks: int, residual: bool = False) -> str:
    parts = key.split(".")
    if parts[0] in _TOP_TO_DIFFUSERS:
        return _join(_TOP_TO_DIFFUSERS[parts[0]], *parts[1:])
    side, rest = parts[0], parts[1:]
    if len(rest) < 2 or side not in ("encoder", "decoder"):
        return key
    for names in (rest[0], _join(*rest[:2])):
        if names in _SIDE_TO_DIFFUSERS:
            return _join(side, _SIDE_TO_DIFFUSERS[names], *rest[len(names.split(".")) :])
    if rest[0] == "middle":
        i, tail = int(rest[1]), rest[2:]
        if i == 1:
            return _join(side, "mid_block.attentions.0", *tail)
        return _join(side, "mid_block.resnets", i // 2, _resnet_tail(tail, _RESNET_TO_DIFFUSERS))
    if residual and rest[0] in ("downsamples", "upsamples") and len(rest) > 3:
        blocks, inner = ("down_blocks", "downsampler") if rest[0] == "downsamples" else ("up_blocks", "upsampler")
        if int(rest[3]) < res_blocks + (rest[0] == "upsamples"):
            return _join(side, blocks, rest[1], "resnets", rest[3], _resnet_tail(rest[4:], _RESNET_TO_DIFFUSERS))
        return _join(side, blocks, rest[1], inner, *rest[4:])
    if rest[0] == "downsamples":
        return _join(side, "down_blocks", rest[1], _resnet_tail(rest[2:], _RESNET_TO_DIFFUSERS))
    if rest[0] == "upsamples":
        stage, j = divmod(int(rest[1]), res_blocks + 2)
        if j <= res_blocks:
            return _join(side, "up_blocks", stage, "resnets", j, _resnet_tail(rest[2:], _RESNET_TO_DIFFUSERS))
        return _join(side, "up_blocks", stage, "upsamplers.0", *rest[2:])
    return key


def _rename(rename: Callable[..., str], key: str, res_blocks: int, residual: bool = False) -> str:
    """`rename(key)`, or the key unchanged where it does not parse (the shape check then reports it)."""
    try:
        return rename(key, res_blocks, residual)
    except (ValueError, IndexError):
        return key


def _res_blocks_of(state: Mapping[str, torch.Tensor], residual: bool, diffusers: bool) -> int:
    if not residual:
        return _num_res_blocks(state, "encoder.down_blocks." if diffusers else "encoder.downsamples.")
    inner = "encoder.down_blocks.0.resnets." if diffusers else "encoder.downsamples.0.downsamples."
    blocks = {int(k[len(inner):].split(".")[0]) for k in state if k.startswith(inner) and ".resample." not in k}
    return len(blocks)


def vae_diffusers_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderKLWan` state dict -> official Wan names (the tensors are not copied)."""
    residual = _is_residual(state)
    res_blocks = _res_blocks_of(state, residual, diffusers=True)
    return {_rename(_diffusers_key_to_official, k, res_blocks, residual): v for k, v in state.items()}


def vae_official_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Wan VAE state dict -> diffusers `AutoencoderKLWan` names (the tensors are not copied)."""
    residual = _is_residual(state)
    res_blocks = _res_blocks_of(state, residual, diffusers=False)
    return {_rename(_official_key_to_diffusers, k, res_blocks, residual): v for k, v in state.items()}


def infer_vae_config(state: Mapping[str, torch.Tensor]) -> WanVAEConfig:
    """Architecture from the shapes of an official-layout state dict; the latent mean/std are Wan's published
    values for its two VAEs (Wan2.1: z_dim 16, Wan2.2: z_dim 48 with residual stages)."""
    if _is_residual(state):
        return _infer_residual_config(state)
    try:
        base_dim = state["encoder.conv1.weight"].shape[0]
        z_dim = state["conv2.weight"].shape[0]
        res_blocks = _num_res_blocks(state, "encoder.downsamples.")
        resamplers = sorted(
            {int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples.") and ".resample." in k}
        )
        stages = len(resamplers) + 1
        # each stage's width: the output channels of its last residual block
        dim_mult = tuple(
            state[f"encoder.downsamples.{s * (res_blocks + 1) + res_blocks - 1}.residual.6.weight"].shape[0] // base_dim
            for s in range(stages)
        )
    except KeyError as exc:
        raise AliceError(f"Wan VAE checkpoint is missing the key {exc.args[0]!r}") from None
    _check_z_dim(z_dim, WanVAEConfig())
    return WanVAEConfig(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=res_blocks,
        temporal_downsample=tuple(f"encoder.downsamples.{i}.time_conv.weight" in state for i in resamplers),
    )


def _check_z_dim(z_dim: int, default: WanVAEConfig) -> None:
    if z_dim != default.z_dim:
        raise AliceError(
            f"Wan VAE checkpoint has z_dim {z_dim}, but its architecture is that of a z_dim-{default.z_dim} Wan VAE: "
            "it is neither the Wan2.1 VAE (z_dim 16) nor the Wan2.2 VAE (z_dim 48); pass one of those with --vae "
            "(`alice download wan2.1-vae`; ComfyUI: wan_2.1_vae.safetensors or wan2.2_vae.safetensors)"
        )


def _infer_residual_config(state: Mapping[str, torch.Tensor]) -> WanVAEConfig:
    try:
        conv_in = state["encoder.conv1.weight"]
        base_dim, z_dim = conv_in.shape[0], state["conv2.weight"].shape[0]
        res_blocks = _res_blocks_of(state, True, diffusers=False)
        stages = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples."))
        dim_mult = tuple(
            state[f"encoder.downsamples.{s}.downsamples.{res_blocks - 1}.residual.6.weight"].shape[0] // base_dim
            for s in range(stages)
        )
        temporal = tuple(
            f"encoder.downsamples.{s}.downsamples.{res_blocks}.time_conv.weight" in state for s in range(stages - 1)
        )
        decoder_base_dim = state["decoder.head.2.weight"].shape[1]
        patch_size = round((conv_in.shape[1] / 3) ** 0.5)
    except KeyError as exc:
        raise AliceError(f"Wan2.2 VAE checkpoint is missing the key {exc.args[0]!r}") from None
    _check_z_dim(z_dim, WAN22_VAE)
    return dataclasses.replace(
        WAN22_VAE, base_dim=base_dim, decoder_base_dim=decoder_base_dim, dim_mult=dim_mult,
        num_res_blocks=res_blocks, temporal_downsample=temporal, patch_size=patch_size,
    )


def _check_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: str,
    config: WanVAEConfig,
    file_key: Callable[[str], str],
) -> None:
    """Raise one error naming missing / unexpected keys and shape mismatches, with keys as the file spells them."""
    missing = [
        f"{file_key(k)} (expected shape {tuple(expected[k].shape)})" for k in sorted(set(expected) - set(state))
    ]
    unexpected = [f"{file_key(k)} (shape {tuple(state[k].shape)})" for k in sorted(set(state) - set(expected))]
    wrong = [
        f"{file_key(k)}: expected shape {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {'; '.join(wrong[:3])}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:3])}")
    arch = (
        f"base_dim={config.base_dim}, z_dim={config.z_dim}, dim_mult={list(config.dim_mult)}, "
        f"num_res_blocks={config.num_res_blocks}"
    )
    raise AliceError(f"{source}: checkpoint does not fit the Wan VAE ({arch}): " + " | ".join(problems))


def inspect_vae(source: str | Path) -> WanVAEConfig:
    """The architecture of a Wan VAE file (or diffusers `vae/` folder) from its tensor names and shapes alone:
    nothing is read, so what a pipeline needs of its VAE (the latent channels) is checked before any loading."""
    from .checkpoint import open_checkpoint

    with open_checkpoint(source) as reader:
        shapes: Mapping = reader.infos  # name -> TensorInfo, which has the .shape the inference reads
    try:
        if detect_vae_layout(shapes) == "diffusers":
            shapes = vae_diffusers_to_official(shapes)
        return infer_vae_config(shapes)
    except AliceError as exc:
        raise AliceError(f"{source}: {exc}") from None


def load_wan_vae(
    source: str | Path | Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    config: WanVAEConfig | None = None,
) -> WanVAE:
    """A WanVAE from a file (.pth/.pt read as plain tensors only, .safetensors), a diffusers `vae/` folder, or an
    in-memory state dict, in either layout; the architecture is read from the shapes unless `config` is given."""
    if isinstance(source, Mapping):
        state, name = dict(source), "VAE state dict"
    else:
        state, name = read_state_dict(source), str(source)
    try:
        # errors name keys as the file spells them
        file_key: Callable[[str], str] = str
        if detect_vae_layout(state) == "diffusers":
            residual = _is_residual(state)
            res_blocks = _res_blocks_of(state, residual, diffusers=True)
            file_key = partial(_rename, _official_key_to_diffusers, res_blocks=res_blocks, residual=residual)
            state = vae_diffusers_to_official(state)
        config = config or infer_vae_config(state)
        with torch.device("meta"):
            model = WanVAE(config)
        _check_state(state, model.state_dict(), name, config, file_key)
    except AliceError as exc:
        msg = str(exc)
        raise AliceError(msg if msg.startswith(name) else f"{name}: {msg}") from None
    # assign=True adopts the loaded (possibly memory-mapped) tensors instead of copying into new ones
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


def load_autoencoder(spec: dict, folder: Path, dtype: torch.dtype = torch.float32) -> VideoAutoencoder:
    """A bundle's autoencoder from its model.json spec: the weight-free space-to-depth latent, or a Wan2.1 VAE file
    (`spec["file"]`, relative to the bundle `folder`)."""
    kind = spec.get("type")
    if kind == "space_to_depth":
        return SpaceToDepthAutoencoder(SpaceToDepthConfig(**{k: v for k, v in spec.items() if k != "type"}))
    if kind == "wan_vae":
        return load_wan_vae(folder / spec["file"], dtype=dtype)
    raise AliceError(f"{folder / 'model.json'}: autoencoder.type must be 'space_to_depth' or 'wan_vae', got {kind!r}")
