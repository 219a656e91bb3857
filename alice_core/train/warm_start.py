"""Warm-starting a teacher at a smaller temporal stride from one trained at a larger stride.

A space-to-depth latent frame at temporal stride T holds T video frames as channels (colour, frame, row, column;
see models/space_to_depth.py). Only the DiT's two ends see that layout: the patch embedding and the output head.
The blocks between them work on tokens and keep their weights. The two ends are regrouped so that the new network,
given a stride-t latent, sees the token the old one would have seen if every frame had been repeated T/t times:
- embedding: the old weights of the k = T/t frame slots a new frame stands for are summed (exact: embedding the
  repeated-frames latent with the old weights equals embedding the new latent with the new ones);
- head: the old outputs for those k slots are averaged (what space_to_depth.decode does with repeated slots).
This keeps what the old teacher learned about colours, shapes and text while giving motion more latent frames.

refit_latent moves a teacher to another latent of the same strides that is an affine map of the first (e.g. the
Haar block transform with per-channel normalisation): the embedding is composed with the map and the head with its
inverse, so the network computes the same function of the clip. Only its noise prior differs (isotropic noise in
the new latent is not isotropic in the old one); training adapts to that.
"""

from __future__ import annotations

import math

import torch

from ..errors import AliceError
from ..models.config import WanDiTConfig


def regroup_temporal_stride(state: dict[str, torch.Tensor], config: WanDiTConfig, spatial_stride: int,
                            from_stride: int, to_stride: int) -> tuple[dict[str, torch.Tensor], WanDiTConfig]:
    """The DiT weights `state` (config `config`, latent strides spatial x from_stride) regrouped for a latent with
    temporal stride `to_stride`; returns the new weights and config (in_dim = out_dim = 3 * to_stride * s^2)."""
    if to_stride < 1 or from_stride % to_stride:
        raise AliceError(f"temporal stride {to_stride} must divide the source model's stride {from_stride} "
                         f"(e.g. {from_stride} -> {from_stride // 2})")
    channels = 3 * from_stride * spatial_stride**2
    if config.in_dim != channels or config.out_dim != channels:
        raise AliceError(f"the source DiT takes {config.in_dim} latent channels, not the {channels} of strides "
                         f"{spatial_stride}x{spatial_stride}x{from_stride}; pass the strides it was trained with")
    k, s, patch = from_stride // to_stride, spatial_stride, config.patch_size
    new_channels = 3 * to_stride * s * s
    out = dict(state)

    w = state["patch_embedding.weight"]  # [dim, channels, pt, ph, pw]; channels = (colour, frame, row, col)
    w = w.reshape(w.shape[0], 3, to_stride, k, s, s, *patch).sum(dim=3)
    out["patch_embedding.weight"] = w.reshape(w.shape[0], new_channels, *patch)

    n_patch = math.prod(patch)  # head rows are (pt, ph, pw, channel) with the channel fastest (see unpatchify)
    for name in ("head.head.weight", "head.head.bias"):
        t = state[name]
        tail = t.shape[1:]
        t = t.reshape(n_patch, 3, to_stride, k, s, s, *tail).mean(dim=3)
        out[name] = t.reshape(n_patch * new_channels, *tail)

    new_config = WanDiTConfig.from_dict({**config.to_dict(), "in_dim": new_channels, "out_dim": new_channels})
    return out, new_config


def refit_latent(state: dict[str, torch.Tensor], config: WanDiTConfig, old_from_new: torch.Tensor,
                 offset: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiT weights for latents x_new with x_old = old_from_new @ x_new + offset (per latent pixel, over channels)."""
    m = old_from_new.to(torch.float64)
    if m.shape != (config.in_dim, config.in_dim) or config.in_dim != config.out_dim:
        raise AliceError(f"a latent map of shape {tuple(m.shape)} does not fit a DiT with {config.in_dim} channels")
    out = dict(state)
    w = state["patch_embedding.weight"].to(torch.float64)  # [dim, channels, pt, ph, pw]
    out["patch_embedding.weight"] = torch.einsum("dc...,ce->de...", w, m).to(state["patch_embedding.weight"])
    bias = state["patch_embedding.bias"].to(torch.float64) + torch.einsum("dc...,c->d", w, offset.to(torch.float64))
    out["patch_embedding.bias"] = bias.to(state["patch_embedding.bias"])
    # The head predicts a velocity: a difference of latents, so only the linear part maps back (v_new = m^-1 v_old).
    inverse = torch.linalg.inv(m)
    n_patch = math.prod(config.patch_size)
    for name in ("head.head.weight", "head.head.bias"):
        t = state[name]
        rows = t.to(torch.float64).reshape(n_patch, config.out_dim, *t.shape[1:])
        out[name] = torch.einsum("ec,pc...->pe...", inverse, rows).reshape(t.shape).to(t)
    return out
