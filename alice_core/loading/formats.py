"""Which Wan DiT checkpoint format a file is, from its key names, shapes and dtypes alone, and how to turn each of
its tensors into the official Wan layout that `WanDiT` uses.

Formats (`CheckpointFormat.layout`):
  official              Wan2.x safetensors / .pth: `patch_embedding.weight` is a Conv3d weight [dim, in, 1, 2, 2]
  rcm                   rCM `.pt`: official names, optional `net.` prefix, 2-D patch embedding [dim, in*1*2*2]
  turbodiffusion        TurboDiffusion `.pth`: rCM names without prefix, plus sparse-linear-attention keys
  turbodiffusion-int8   TurboDiffusion `-quant.pth`: block Linears as `int8_weight` + `scale` per 128x128 block
  diffusers             `WanTransformer3DModel` names (`attn1.to_q`, `scale_shift_table`, ...)
  comfy-scaled-fp8      ComfyUI's scaled fp8: a `scaled_fp8` marker, fp8 weights and a `.scale_weight` per layer

Nothing here loads weights: detection works on anything with `.shape` and `.dtype` per key (a state dict, or
`CheckpointReader.infos`), and `materialize` builds one official-layout tensor when asked.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.config import DIT_PRESETS, WanDiTConfig
from ..models.dit import meta_state_dict
from .checkpoint import open_checkpoint
from .dit_keys import check_state_matches, infer_dit_config, official_key_from_diffusers

# Alice's own files store their architecture in the safetensors header under this key.
CONFIG_METADATA_KEY = "alice_dit_config"
LAYOUTS = ("official", "rcm", "turbodiffusion", "turbodiffusion-int8", "diffusers", "comfy-scaled-fp8")
# Prefixes that wrap the model's own names: rCM's `net.`, ComfyUI full checkpoints, diffusers pipelines.
PREFIXES = ("", "net.", "model.diffusion_model.", "diffusion_model.", "model.", "transformer.")
SCALED_FP8_MARKER = "scaled_fp8"
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")
SLA_KEY = ".attn_op.local_attn."
INT8_BLOCK = 128
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass(frozen=True)
class TensorRecipe:
    """How one official-layout tensor is made from the file's tensors.

    kind: "copy"; "patch_linear" (rCM's 2-D patch embedding reshaped to the Conv3d weight); "int8_blocks"
    (sources: int8 weight, per-block scale); "scaled_fp8" (sources: fp8 weight, per-tensor scale).
    """

    kind: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype  # dtype of the first source as stored in the file

    @property
    def dequantizes(self) -> bool:
        return self.kind in ("int8_blocks", "scaled_fp8")


@dataclass
class CheckpointFormat:
    source: str
    layout: str
    prefix: str
    recipes: dict[str, TensorRecipe]
    config: WanDiTConfig
    ignored: dict[str, str] = field(default_factory=dict)  # file key -> why it is not used

    def ordered_keys(self, file_order: list[str]) -> list[str]:
        """Official keys in the order their first source appears in the file (sequential reads)."""
        position = {k: i for i, k in enumerate(file_order)}
        return sorted(self.recipes, key=lambda k: position.get(self.recipes[k].sources[0], 0))

    def describe(self) -> str:
        """A few lines for people: layout, architecture, storage dtypes, ignored keys."""
        c = self.config
        preset = next((name for name, p in DIT_PRESETS.items() if _same_architecture(p, c)), None)
        params = sum(math.prod(r.shape) for r in self.recipes.values())
        dtypes = Counter(_dtype_name(r.dtype) + (" (scaled)" if r.kind == "scaled_fp8" else "")
                         + (" (128x128 blocks)" if r.kind == "int8_blocks" else "") for r in self.recipes.values())
        lines = [
            f"{self.source}",
            f"  layout: {self.layout}" + (f" (key prefix {self.prefix!r})" if self.prefix else ""),
            f"  architecture: dim {c.dim}, {c.num_heads} heads, {c.num_layers} layers, ffn {c.ffn_dim}, in_dim {c.in_dim}, "
            f"out_dim {c.out_dim}, text_dim {c.text_dim}, freq_dim {c.freq_dim}" + (f" ({preset})" if preset else ""),
            f"  weights: {len(self.recipes)} tensors, {params / 1e9:.3f} B parameters; "
            + ", ".join(f"{n} x{count}" for n, count in dtypes.most_common()),
        ]
        if self.ignored:
            reasons = Counter(self.ignored.values())
            lines.append("  ignored: " + "; ".join(f"{n} {why}" for why, n in reasons.items()))
        return "\n".join(lines)


def _same_architecture(a: WanDiTConfig, b: WanDiTConfig) -> bool:
    fields = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _find_prefix(keys: set[str]) -> tuple[str, str] | None:
    for prefix in PREFIXES:
        if prefix + "head.modulation" in keys:
            return prefix, "official"
        if prefix + "scale_shift_table" in keys and prefix + "proj_out.weight" in keys:
            return prefix, "diffusers"
    return None


def detect_format(
    infos: Mapping[str, object],
    source: str = "state dict",
    config: WanDiTConfig | None = None,
    patch_size: tuple[int, int, int] = (1, 2, 2),
) -> CheckpointFormat:
    """Detect the layout and architecture of a Wan DiT checkpoint from `infos` (key -> object with .shape and
    .dtype), and check that every tensor the model needs is there with the right shape.

    `config` overrides the architecture inferred from shapes (needed for num_heads when dim is not 128 * heads).
    Raises AliceError naming `source` and the expected versus found keys/shapes.
    """
    keys = set(infos)
    found = _find_prefix(keys)
    if found is None:
        sample = sorted(keys)[:6]
        raise AliceError(
            f"{source}: not a Wan DiT checkpoint: expected `head.modulation` (official Wan / rCM / TurboDiffusion / "
            f"ComfyUI) or `scale_shift_table` + `proj_out.weight` (diffusers), optionally under a prefix such as "
            f"`net.`; found keys like {sample}"
        )
    prefix, family = found
    unprefixed = sorted(k for k in keys if not k.startswith(prefix))
    local = {k[len(prefix):]: k for k in sorted(keys) if k.startswith(prefix)}
    if family == "diffusers":
        recipes, ignored, layout = _diffusers_recipes(local, infos)
    else:
        recipes, ignored, layout = _official_recipes(local, infos, source, patch_size)
        if layout == "official" and prefix == "net.":
            layout = "rcm"
    if unprefixed:
        ignored.update({k: "keys outside the model prefix" for k in unprefixed})

    integer = next((k for k, r in recipes.items() if not r.dequantizes and not r.dtype.is_floating_point), None)
    if integer is not None:
        raise AliceError(
            f"{source}: tensor {integer!r} is stored as {_dtype_name(recipes[integer].dtype)}; a Wan DiT's weights are "
            "floating point (fp32, bf16, fp16 or fp8): re-export the checkpoint from its source"
        )
    config = config or _infer_config(recipes, source)
    # Shapes against the model the config describes; this also catches files whose blocks disagree.
    check_state_matches(recipes, meta_state_dict(config), source)
    return CheckpointFormat(source, layout, prefix, recipes, config, ignored)


def _infer_config(recipes: dict[str, TensorRecipe], source: str) -> WanDiTConfig:
    try:
        return infer_dit_config(recipes)
    except AliceError as exc:
        raise AliceError(f"{source}: {exc}") from None


def _diffusers_recipes(local: dict[str, str], infos: Mapping[str, object]):
    recipes = {}
    for name, key in local.items():
        info = infos[key]
        recipes[official_key_from_diffusers(name)] = TensorRecipe("copy", (key,), tuple(info.shape), info.dtype)
    return recipes, {}, "diffusers"


def _official_recipes(local: dict[str, str], infos: Mapping[str, object], source: str, patch_size):
    recipes: dict[str, TensorRecipe] = {}
    ignored: dict[str, str] = {}
    int8_scales = {k.removesuffix(".int8_weight") + ".scale" for k in local if k.endswith(".int8_weight")}

    def shape_of(name: str) -> tuple[int, ...]:
        return tuple(infos[local[name]].shape)

    def weight_scale_of(name: str) -> str | None:
        base = name.removesuffix("weight")
        return next((base + s[1:] for s in WEIGHT_SCALE_SUFFIXES if base + s[1:] in local), None)

    for name, key in local.items():
        dtype, shape = infos[key].dtype, shape_of(name)
        if name == SCALED_FP8_MARKER:
            ignored[key] = "format marker"
        elif name.endswith(INPUT_SCALE_SUFFIXES):
            ignored[key] = "fp8 activation scales (recomputed at run time)"
        elif SLA_KEY in name:
            ignored[key] = "sparse-linear-attention projections (unused with dense attention)"
        elif name in int8_scales:
            continue  # read with its int8 weight
        elif name.endswith(WEIGHT_SCALE_SUFFIXES):
            if name.rsplit(".", 1)[0] + ".weight" not in local:
                raise AliceError(f"{source}: {key} scales a weight that is not in the file")
        elif name.endswith(".int8_weight"):
            base = name.removesuffix(".int8_weight")
            scale = base + ".scale"
            if scale not in local:
                raise AliceError(f"{source}: {key} has no per-block scale {key.removesuffix('int8_weight')}scale")
            blocks = (math.ceil(shape[0] / INT8_BLOCK), math.ceil(shape[1] / INT8_BLOCK))
            if shape_of(scale) != blocks:
                raise AliceError(
                    f"{source}: {local[scale]} should hold one scale per {INT8_BLOCK}x{INT8_BLOCK} block of {key} "
                    f"{shape}: expected shape {blocks}, found {shape_of(scale)}"
                )
            recipes[base + ".weight"] = TensorRecipe("int8_blocks", (key, local[scale]), shape, dtype)
        elif name == "patch_embedding.weight" and len(shape) == 2:
            per_channel = math.prod(patch_size)
            if shape[1] % per_channel:
                raise AliceError(
                    f"{source}: {key} has shape {shape}; a 2-D (rCM) patch embedding must be [dim, in_dim*{per_channel}]"
                )
            recipes[name] = TensorRecipe("patch_linear", (key,), (shape[0], shape[1] // per_channel, *patch_size), dtype)
        elif not dtype.is_floating_point and math.prod(shape) <= 1:
            ignored[key] = "integer bookkeeping scalars"
        elif name.endswith(".weight") and weight_scale_of(name) is not None:
            recipes[name] = TensorRecipe("scaled_fp8", (key, local[weight_scale_of(name)]), shape, dtype)
        else:
            recipes[name] = TensorRecipe("copy", (key,), shape, dtype)

    if int8_scales:
        layout = "turbodiffusion-int8"
    elif any(SLA_KEY in k for k in local):
        layout = "turbodiffusion"
    elif SCALED_FP8_MARKER in local or any(r.kind == "scaled_fp8" for r in recipes.values()):
        layout = "comfy-scaled-fp8"
    elif "patch_embedding.weight" in recipes and recipes["patch_embedding.weight"].kind == "patch_linear":
        layout = "rcm"
    else:
        layout = "official"
    return recipes, ignored, layout


# -- making tensors ----------------------------------------------------------------------------------------------
def dequantize_int8_blocks(q: torch.Tensor, scale: torch.Tensor, block: int = INT8_BLOCK) -> torch.Tensor:
    """TurboDiffusion int8 weights: w = q * scale of its 128x128 block (scale = block amax / 128), in float32."""
    rows, cols = q.shape
    full = scale.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return q.float() * full


def unscale_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """ComfyUI scaled fp8: the real weight is the stored fp8 value times its per-tensor scale, in float32."""
    return weight.float() * scale.float()


def materialize(recipe: TensorRecipe, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The official-layout tensor for `recipe`; dequantised kinds come back in float32, others as stored."""
    if recipe.kind == "copy":
        return read(recipe.sources[0])
    if recipe.kind == "patch_linear":
        return read(recipe.sources[0]).reshape(recipe.shape)
    if recipe.kind == "int8_blocks":
        return dequantize_int8_blocks(read(recipe.sources[0]), read(recipe.sources[1]))
    if recipe.kind == "scaled_fp8":
        return unscale_fp8(read(recipe.sources[0]), read(recipe.sources[1]))
    raise ValueError(f"unknown recipe kind {recipe.kind!r}")


def read_fp8_with_scale(
    recipe: TensorRecipe, read: Callable[[str], torch.Tensor], fp8_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(stored fp8 weight, per-tensor scale) when the file already holds this weight in `fp8_dtype`, so an fp8
    model can keep the exact stored bytes instead of dequantising and quantising again; otherwise None."""
    if recipe.dtype != fp8_dtype:
        return None
    if recipe.kind == "scaled_fp8":
        return read(recipe.sources[0]), read(recipe.sources[1]).float().reshape(())
    if recipe.kind == "copy":
        return read(recipe.sources[0]), torch.ones((), dtype=torch.float32)
    return None


def convert_state_dict(state: dict[str, torch.Tensor], config: WanDiTConfig | None = None, source: str = "state dict"):
    """An in-memory state dict of any supported layout -> (official-layout state dict, its CheckpointFormat)."""
    fmt = detect_format(state, source, config)
    return {k: materialize(r, state.__getitem__) for k, r in fmt.recipes.items()}, fmt


def inspect_checkpoint(path: str | Path, config: WanDiTConfig | None = None) -> CheckpointFormat:
    """Detect a file's (or diffusers folder's) format and architecture without loading its weights."""
    path = Path(path).expanduser()
    with open_checkpoint(path) as reader:
        return detect_format(reader.infos, str(path), config or stored_config(path, reader.metadata))


def stored_config(path: Path, metadata: Mapping[str, str]) -> WanDiTConfig | None:
    """The architecture stored with a checkpoint, if any: Alice's safetensors metadata (`metadata` is the file's
    header metadata), or a diffusers folder's config.json."""
    found = config_from_metadata(metadata, path)
    for cfg_file in (path / "config.json", path / "transformer" / "config.json") if path.is_dir() and not found else ():
        if cfg_file.exists():
            return _diffusers_config(cfg_file)
    return found


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
