"""One config dataclass per model, with named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import AliceError


@dataclass(frozen=True)
class WanDiTConfig:
    """Architecture of a Wan2.x DiT (official Wan naming of the hyper-parameters).

    Image-to-video models have in_dim > out_dim (the conditioning y is concatenated to the noisy latent: 36 = 16
    noise + 4 mask + 16 image latent); `image_dim` is the CLIP embedding width of Wan2.1 I2V (1280), None when the
    model has no `img_emb` (T2V, Wan2.2 I2V, TI2V)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    image_dim: int | None = None

    def __post_init__(self) -> None:
        sizes = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len", "freq_dim")
        bad = [f"{n}={getattr(self, n)!r}" for n in sizes if type(getattr(self, n)) is not int or getattr(self, n) < 1]
        patch = self.patch_size
        if not isinstance(patch, (list, tuple)) or len(patch) != 3 or any(type(p) is not int or p < 1 for p in patch):
            bad.append(f"patch_size={patch!r}")
        if bad:
            raise AliceError(f"DiT config: {', '.join(bad)} must be positive integers (patch_size three of them)")
        object.__setattr__(self, "patch_size", tuple(patch))
        if self.dim % self.num_heads:
            raise AliceError(f"DiT config: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise AliceError(f"DiT config: head dim {self.dim // self.num_heads} must be even for RoPE")
        if self.in_dim < self.out_dim:
            raise AliceError(f"DiT config: in_dim {self.in_dim} is smaller than out_dim {self.out_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WanDiTConfig":
        if not isinstance(d, dict):
            raise AliceError(f"DiT config: expected a JSON object of hyper-parameters, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AliceError(f"DiT config: unknown keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "WanDiTConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


DIT_PRESETS: dict[str, WanDiTConfig] = {
    "wan2.1-t2v-1.3b": WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.1-i2v-14b": WanDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, image_dim=1280),
    "wan2.2-i2v-a14b": WanDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36),
    "wan2.2-ti2v-5b": WanDiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
}


def dit_preset(name: str) -> WanDiTConfig:
    """A named DiT preset; the error lists the valid names."""
    try:
        return DIT_PRESETS[name]
    except KeyError:
        raise AliceError(f"unknown DiT preset {name!r}; choose one of {sorted(DIT_PRESETS)}") from None


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of a Wan video VAE (causal 3D convolutions): Wan2.1 by default (stride 4x8x8, 16 channels);
    `WAN22_VAE` is the Wan2.2 one (residual stages, 2x2 pixel patchify, stride 4x16x16, 48 channels)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )
    latents_std: tuple[float, ...] = (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )
    decoder_base_dim: int | None = None  # None: base_dim (Wan2.1); Wan2.2 decodes wider than it encodes
    patch_size: int = 1  # pixels folded into channels before the encoder (Wan2.2: 2)
    residual: bool = False  # Wan2.2's stages with averaging / duplicating shortcuts

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise AliceError(
                f"VAE config: latents_mean/latents_std need {self.z_dim} values (z_dim), "
                f"got {len(self.latents_mean)}/{len(self.latents_std)}"
            )

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)


WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
# The Wan2.2 VAE of TI2V-5B (`Wan2.2_VAE.pth`): stride 4x16x16, 48 latent channels.
WAN22_VAE = WanVAEConfig(
    base_dim=160, decoder_base_dim=256, z_dim=48, latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD,
    patch_size=2, residual=True,
)
