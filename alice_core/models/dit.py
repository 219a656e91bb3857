"""The Wan2.x DiT in plain PyTorch: text-to-video, image-to-video and TI2V.

Module names follow the official Wan checkpoints (`blocks.N.self_attn.q`, `ffn.0`, `modulation`, `head.head`, ...),
so official and rCM state dicts load without renaming; other layouts are converted in `alice_core.loading`.
Layers come from an injected `ops` namespace (see `ops.py`) so fp8 / NF4 layers swap in; the attention kernel is
injected the same way (an `AttentionBackend`, see `attention.py`).

Image-to-video variants differ only in their inputs: the conditioning latent `y` (frame mask + image latent,
in_dim - out_dim channels) is concatenated to the noisy latent before the patch embedding, and Wan2.1 I2V adds
a CLIP image embedding that `img_emb` projects into extra tokens read by the `k_img`/`v_img` cross-attention.
TI2V-5B passes one timestep per token (t of shape [B, L]) so the first latent frame can stay clean.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AliceError
from .attention import DEFAULT_ATTENTION, AttentionBackend, shared_backend
from .config import WanDiTConfig
from .ops import Linear, StandardOps, upcast


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of position * 10000^(-i/half), computed in float64."""
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_frequency_split(head_dim: int) -> tuple[int, int, int]:
    """Channel pairs given to time, height and width (44/42/42 channels for head_dim 128)."""
    hw = 2 * (head_dim // 6)
    return (head_dim - 2 * hw) // 2, hw // 2, hw // 2


@functools.lru_cache(maxsize=8)
def rope_rotations(
    head_dim: int, grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit complex rotations e^(i angle) [L, head_dim/2] of Wan's 3D RoPE for a (frames, height, width) token
    grid, complex64 for a float32 `dtype` (complex128 for float64).

    Built once per (grid, device, dtype) in float64 and cached: every forward of a generation (and every step)
    reuses them. Built outside inference mode so tables first made under ComfyUI's inference_mode still serve a
    training step."""
    with torch.inference_mode(False), torch.no_grad():
        tables = []
        for n_pairs, size in zip(rope_frequency_split(head_dim), grid):
            # Each axis uses the frequencies it would have as a 1D RoPE of 2*n_pairs channels (theta 1e4).
            exponent = torch.arange(0, 2 * n_pairs, 2, dtype=torch.float64, device=device) / (2 * n_pairs)
            tables.append(torch.outer(torch.arange(size, dtype=torch.float64, device=device), 1.0 / 10000.0**exponent))
        f, h, w = grid
        angles = torch.cat(
            [
                tables[0][:, None, None, :].expand(f, h, w, -1),
                tables[1][None, :, None, :].expand(f, h, w, -1),
                tables[2][None, None, :, :].expand(f, h, w, -1),
            ],
            dim=-1,
        ).reshape(f * h * w, -1)
        rotations = torch.polar(torch.ones_like(angles), angles)
        return rotations if dtype == torch.float64 else rotations.to(torch.complex64)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, L, heads, head_dim] by `rope_rotations`, in float32 (float64 stays).

    One complex multiplication, as Wan does: about 12x faster on a CPU than writing the rotated pairs into even/odd
    strided slices, with the same values."""
    pairs = torch.view_as_complex(upcast(x).unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotations[None, :, None, :]).flatten(-2)


def modulation_table(rows: int, dim: int) -> nn.Parameter:
    """A learned [1, rows, dim] shift/scale/gate table, N(0, 1/dim). Left uninitialised on the meta device (a
    checkpoint fills it): there torch's Python normal_ kernel would import torch._dynamo, 1-3 s of start-up."""
    table = torch.empty(1, rows, dim)
    return nn.Parameter(table if table.is_meta else table.normal_(std=dim**-0.5))


class Attention(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k over the full dim (across heads, not per head)."""

    def __init__(self, cfg: WanDiTConfig, ops=StandardOps, attention: AttentionBackend | None = None) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attention = attention or shared_backend(DEFAULT_ATTENTION)
        self.q = ops.Linear(cfg.dim, cfg.dim)
        self.k = ops.Linear(cfg.dim, cfg.dim)
        self.v = ops.Linear(cfg.dim, cfg.dim)
        self.o = ops.Linear(cfg.dim, cfg.dim)
        self.norm_q = ops.RMSNorm(cfg.dim, eps=cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = ops.RMSNorm(cfg.dim, eps=cfg.eps) if cfg.qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))


class SelfAttention(Attention):
    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        v = self.v(x)
        # normalised and rotated in float32, as Wan does
        q = apply_rope(self.heads(self.norm_q(upcast(self.q(x)))), rope).to(v.dtype)
        k = apply_rope(self.heads(self.norm_k(upcast(self.k(x)))), rope).to(v.dtype)
        return self.o(self.attention(q, k, self.heads(v)))


class CrossAttention(Attention):
    """Attention to the text tokens; no RoPE. With `image_dim` set (Wan2.1 I2V) the same queries also attend to
    the projected CLIP tokens through their own keys/values, and the two results are summed."""

    def __init__(self, cfg: WanDiTConfig, ops=StandardOps, attention: AttentionBackend | None = None) -> None:
        super().__init__(cfg, ops, attention)
        if cfg.image_dim is not None:
            self.k_img = ops.Linear(cfg.dim, cfg.dim)
            self.v_img = ops.Linear(cfg.dim, cfg.dim)
            self.norm_k_img = ops.RMSNorm(cfg.dim, eps=cfg.eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_context: torch.Tensor | None = None) -> torch.Tensor:
        v = self.v(context)
        q = self.heads(self.norm_q(self.q(x)).to(v.dtype))
        k = self.heads(self.norm_k(self.k(context)).to(v.dtype))
        out = self.attention(q, k, self.heads(v))
        if image_context is not None:
            v_img = self.v_img(image_context)
            k_img = self.heads(self.norm_k_img(self.k_img(image_context)).to(v_img.dtype))
            out = out + self.attention(q, k_img, self.heads(v_img))
        return self.o(out)


class ImageProjection(nn.Module):
    """Wan2.1 I2V `img_emb`: LayerNorm -> Linear -> GELU -> Linear -> LayerNorm from CLIP width to the model dim
    (indices match the official `img_emb.proj.{0,1,3,4}` keys)."""

    def __init__(self, cfg: WanDiTConfig, ops=StandardOps) -> None:
        super().__init__()
        width = cfg.image_dim
        self.proj = nn.Sequential(
            ops.LayerNorm(width), ops.Linear(width, width), nn.GELU(), ops.Linear(width, cfg.dim), ops.LayerNorm(cfg.dim)
        )

    def forward(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        return self.proj(clip_embedding)


class GeluMlp(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear (indices 0 and 2, as the official `ffn.0` / `ffn.2` and `text_embedding.0` /
    `.2` keys)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, ops=StandardOps) -> None:
        super().__init__(ops.Linear(in_dim, hidden_dim), nn.GELU(approximate="tanh"), ops.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain Linear fuses the GELU into its GEMM when it can (bf16 inference on a CPU): the hidden activation
        # is then written once, not written, read and written again (1.2-2.4 ms of 7-9 per block at the 1.3B
        # width, 192 tokens). Quantised layers, hooked (LoRA) layers and autograd run the layers one by one.
        fc1, act, fc2 = self
        hidden = fc1.gelu_tanh(x) if type(fc1).forward is Linear.forward else None
        return fc2(act(fc1(x)) if hidden is None else hidden)


class FeedForward(GeluMlp):
    def __init__(self, cfg: WanDiTConfig, ops=StandardOps) -> None:
        super().__init__(cfg.dim, cfg.ffn_dim, cfg.dim, ops)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig, ops=StandardOps, attention: AttentionBackend | None = None) -> None:
        super().__init__()
        self.norm1 = ops.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg, ops, attention)
        # norm3 (affine) sits before cross-attention; it is the only block norm with parameters.
        self.norm3 = ops.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg, ops, attention)
        self.norm2 = ops.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = FeedForward(cfg, ops)
        self.modulation = modulation_table(6, cfg.dim)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        rope: torch.Tensor,
        image_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # The residual stream x stays in the model's dtype, as in diffusers (a float32 stream beside bf16 weights
        # costs peak memory); norms, modulation and the gated sums run in float32 and are cast back. Shift/scale/gate for attention, then for the FFN; e0 is [B, 1 or L, 6, dim].
        # addcmul: one kernel and one float32 temporary for each modulation and gated sum (x + y * gate promotes
        # to the float32 of the gate without an upcast copy of x).
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (upcast(self.modulation) + e0).unbind(2)
        # Each branch output is used in place (no local name), so it is freed before the next branch runs.
        x = torch.addcmul(x, self.self_attn(torch.addcmul(shift_a, self.norm1(x), 1 + scale_a).to(x.dtype), rope),
                          gate_a).to(x.dtype)
        x = x + self.cross_attn(self.norm3(x), context, image_context).to(x.dtype)
        return torch.addcmul(x, self.ffn(torch.addcmul(shift_f, self.norm2(x), 1 + scale_f).to(x.dtype)),
                             gate_f).to(x.dtype)


class Head(nn.Module):
    def __init__(self, cfg: WanDiTConfig, ops=StandardOps) -> None:
        super().__init__()
        self.norm = ops.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = ops.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = modulation_table(2, cfg.dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # e is [B, 1 or L, dim]
        shift, scale = (upcast(self.modulation) + e[:, :, None]).unbind(2)
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))


class WanDiT(nn.Module):
    """Wan2.x DiT. `model(x, t, context) -> velocity` (flow matching, v = noise - x0).

    x: [B, out_dim, F, H, W] noisy latents; t: [B] timesteps in Wan's 0..1000 units, or [B, L] one per token
    (TI2V); context: [B, L, text_dim] text states, L <= text_len (zero-padded here to text_len as Wan does).
    Image-to-video models also take y [B, in_dim - out_dim, F, H, W] (mask + image latent) and, when the config
    has `image_dim`, clip_embedding [B, N, image_dim] (CLIP ViT-H penultimate states). `attention` names the kernel
    (sdpa, flash, sage).
    """

    def __init__(self, cfg: WanDiTConfig, ops=StandardOps, attention: str = DEFAULT_ATTENTION) -> None:
        super().__init__()
        self.config = cfg
        backend = shared_backend(attention)
        self.patch_embedding = ops.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = GeluMlp(cfg.text_dim, cfg.dim, cfg.dim, ops)
        self.time_embedding = nn.Sequential(ops.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), ops.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([WanBlock(cfg, ops, backend) for _ in range(cfg.num_layers)])
        self.head = Head(cfg, ops)
        if cfg.image_dim is not None:
            self.img_emb = ImageProjection(cfg, ops)

    def init_weights(self) -> "WanDiT":
        """Fresh-training init as Wan does it: Xavier linears with zero biases, small-normal embeddings and a
        zero output head, so an untrained model predicts v = 0 and early training is stable."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        return self

    def set_attention(self, name: str) -> AttentionBackend:
        """Switch every block to the named kernel (falling back to sdpa, with one logged line, if it is missing)."""
        backend = shared_backend(name)
        for module in self.modules():
            if isinstance(module, Attention):
                module.attention = backend
        return backend

    @property
    def dtype(self) -> torch.dtype:
        return self.head.head.weight.dtype if self.head.head.weight.is_floating_point() else torch.bfloat16

    def check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        clip_embedding: torch.Tensor | None = None,
    ) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.out_dim:
            raise AliceError(f"DiT input must be [B, {cfg.out_dim}, F, H, W] latents, got shape {tuple(x.shape)}")
        self._check_image_inputs(x, y, clip_embedding)
        pt, ph, pw = cfg.patch_size
        if x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
            raise AliceError(f"latent size {tuple(x.shape[2:])} is not divisible by the patch size {cfg.patch_size}")
        tokens = (x.shape[2] // pt) * (x.shape[3] // ph) * (x.shape[4] // pw)
        if t.shape not in ((x.shape[0],), (x.shape[0], tokens)):
            raise AliceError(
                f"timesteps must have shape [B]=[{x.shape[0]}] or [B, tokens]=[{x.shape[0]}, {tokens}], got {tuple(t.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.text_dim:
            raise AliceError(
                f"text context must be [B={x.shape[0]}, L, text_dim={cfg.text_dim}], got {tuple(context.shape)}; "
                "is the text encoder the one this model was trained with?"
            )
        if context.shape[1] > cfg.text_len:
            raise AliceError(f"text context has {context.shape[1]} tokens, more than the model's text_len {cfg.text_len}")

    def _check_image_inputs(self, x: torch.Tensor, y: torch.Tensor | None, clip_embedding: torch.Tensor | None) -> None:
        cfg = self.config
        y_channels = cfg.in_dim - cfg.out_dim
        if y_channels and y is None:
            raise AliceError(
                f"this is an image-to-video model (in_dim {cfg.in_dim}): it needs the image conditioning y "
                f"[B, {y_channels}, F, H, W]; give it a start image"
            )
        if y is not None and (not y_channels or y.shape != (x.shape[0], y_channels, *x.shape[2:])):
            if not y_channels:
                raise AliceError("this is a text-to-video model: it takes no image conditioning y; drop the start image")
            raise AliceError(f"image conditioning y must be [B, {y_channels}, {', '.join(map(str, x.shape[2:]))}], got {tuple(y.shape)}")
        if cfg.image_dim is not None and clip_embedding is None:
            raise AliceError("this Wan2.1 image-to-video model needs a CLIP image embedding (clip_embedding); load the CLIP vision encoder")
        if clip_embedding is not None:
            if cfg.image_dim is None:
                raise AliceError("this model has no image embedding layers (img_emb); it takes no CLIP image embedding")
            if clip_embedding.ndim != 3 or clip_embedding.shape[0] != x.shape[0] or clip_embedding.shape[2] != cfg.image_dim:
                raise AliceError(
                    f"CLIP image embedding must be [B={x.shape[0]}, N, {cfg.image_dim}], got {tuple(clip_embedding.shape)}"
                )

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding e [B, 1 or L, dim] (used by the head) and the per-block modulation input e0
        [B, 1 or L, 6, dim]; t is [B] (one time per sample) or [B, L] (one per token)."""
        dtype = upcast(self.head.modulation).dtype
        per_token = t if t.ndim == 2 else t[:, None]
        sinusoid = sinusoidal_embedding(self.config.freq_dim, per_token.flatten()).to(dtype)
        e = upcast(self.time_embedding(sinusoid)).unflatten(0, per_token.shape)
        e0 = upcast(self.time_projection(e)).unflatten(-1, (6, self.config.dim))
        return e, e0

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        clip_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        self.check_inputs(x, t, context, y, clip_embedding)
        tokens = self.patch_embedding(x if y is None else torch.cat([x, y.to(x.dtype)], dim=1))
        grid = tuple(tokens.shape[2:])
        # The residual stream's dtype is the weights' (also under autocast); contiguous once here, not in each block
        # (.contiguous(): `.to(memory_format=...)` returns this transposed view as it is when the dtype matches, and
        # every block then ran on the transposed layout).
        tokens = tokens.flatten(2).transpose(1, 2).to(self.patch_embedding.weight.dtype).contiguous()
        rope = rope_rotations(cfg.head_dim, grid, x.device, upcast(tokens).dtype)

        e, e0 = self.embed_time(t)
        if context.shape[1] < cfg.text_len:  # F.pad copies even when there is nothing to pad
            context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        context = self.text_embedding(context)
        image_context = self.img_emb(clip_embedding) if clip_embedding is not None else None

        for block in self.blocks:
            tokens = block(tokens, e0, context, rope, image_context)
        return self.unpatchify(self.head(tokens, e), grid).to(x.dtype)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, out_dim * prod(patch)] -> [B, out_dim, F, H, W]."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = upcast(tokens).view(tokens.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(tokens.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)


@functools.lru_cache(maxsize=8)
def meta_state_dict(config: WanDiTConfig) -> Mapping[str, torch.Tensor]:
    """WanDiT(config)'s state dict on the meta device (names and shapes, no storage), read-only. Built once per
    architecture: checking each checkpoint file and estimating memory ask for it again, ~20 ms a build on a CPU."""
    with torch.device("meta"):
        return MappingProxyType(WanDiT(config).state_dict())
