"""LoRA and weight-difference files for a Wan DiT: read, match to the model, apply with a strength.

Key styles understood (with or without a `diffusion_model.` / `transformer.` / `base_model.model.` prefix, and in
official Wan or diffusers module names):
  kohya      `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.lora_up.weight`, `.alpha`
  PEFT       `blocks.0.self_attn.q.lora_A.weight`, `.lora_B.weight` (optional `.alpha`)
  lightx2v   `blocks.0.self_attn.norm_q.diff` (full weight difference), `.diff_b` (bias difference)

The effective weight is W + strength * scale * (B @ A) with scale = alpha / rank (1 without alpha); a `diff` adds
strength * diff. Full-precision Linears get the update merged into their weight. fp8 / NF4 Linears keep it as a
separate adapter evaluated in forward (re-quantising would add error and NF4 cannot take it in place).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AliceError
from .checkpoint import read_state_dict
from .output import save_tensors
from .dit_keys import diffusers_key_from_official, official_key_from_diffusers
from .quant import is_quantized_linear

PREFIXES = (
    "base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "lora_unet_",
    "lora_transformer_",
)
LOW_RANK_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".alpha": "alpha",
}
DIFF_SUFFIXES = {".diff": "diff", ".diff_b": "diff_b"}
# safetensors metadata key of LoRAs made by `alice finetune`: JSON with the base model hash, rank, steps, prompts.
LORA_METADATA_KEY = "alice_lora"
logger = logging.getLogger(__name__)


@dataclass
class LoraReport:
    source: str
    strength: float
    matched: int = 0                                      # LoRA file keys that were applied
    unmatched: dict[str, str] = field(default_factory=dict)  # LoRA file key -> why it was not applied
    merged: list[str] = field(default_factory=list)          # model tensors changed in place
    adapters: list[str] = field(default_factory=list)        # Linears that got a separate adapter

    @property
    def total(self) -> int:
        return self.matched + len(self.unmatched)

    def summary(self) -> str:
        text = (f"{self.source}: matched {self.matched}/{self.total} LoRA keys at strength {self.strength:g} "
                f"({len(self.merged)} tensors merged, {len(self.adapters)} separate adapters)")
        if self.unmatched:
            shown = "; ".join(f"{k} ({why})" for k, why in list(self.unmatched.items())[:10])
            more = f"; and {len(self.unmatched) - 10} more" if len(self.unmatched) > 10 else ""
            text += f"\n  not applied: {shown}{more}"
        return text


class LoraAdapter(nn.Module):
    """A separate update y += scale * x @ (up @ down)^T; for a full difference `down` is None and `up` is the
    difference itself. Buffers are not persistent, so the model's state dict is unchanged."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor | None, scale: float) -> None:
        super().__init__()
        self.register_buffer("up", up, persistent=False)
        self.register_buffer("down", down, persistent=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.up.dtype)
        h = F.linear(x, self.down) if self.down is not None else x
        return F.linear(h, self.up) * self.scale

    def delta(self) -> torch.Tensor:
        up = self.up.float()
        return self.scale * (up @ self.down.float() if self.down is not None else up)


def _add_adapters(module: nn.Module, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    for adapter in module.lora_adapters:
        output = output + adapter(x).to(output.dtype)
    return output


def _adapter_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return _add_adapters(module, output, args[0])


def attach_adapter(module: nn.Module, adapter: nn.Module) -> None:
    """Add `adapter(x)` to a Linear's output through a forward hook; any layer kind (fp8, NF4) takes one."""
    if not hasattr(module, "lora_adapters"):
        module.lora_adapters = nn.ModuleList()
        module._lora_hook = module.register_forward_hook(_adapter_hook)
    module.lora_adapters.append(adapter)


def remove_loras(model: nn.Module) -> int:
    """Remove every separate adapter (merged updates stay); returns how many Linears had adapters."""
    count = 0
    for module in model.modules():
        if hasattr(module, "lora_adapters"):
            module._lora_hook.remove()
            del module.lora_adapters, module._lora_hook
            count += 1
    return count


def effective_weight(module: nn.Module) -> torch.Tensor:
    """A Linear's weight as its forward uses it, in float32: dequantised base plus any separate adapters."""
    base = module.dequantized_weight(torch.float32) if is_quantized_linear(module) else module.weight.float()
    for adapter in getattr(module, "lora_adapters", ()):
        base = base + adapter.delta().to(base.device)
    return base


def read_lora_metadata(path: str | Path) -> dict:
    """The `alice_lora` metadata of a LoRA file made by `alice finetune` ({} for other LoRAs)."""
    import json

    from .checkpoint import read_safetensors_metadata

    if Path(path).suffix != ".safetensors":
        return {}
    try:
        text = read_safetensors_metadata(path).get(LORA_METADATA_KEY)
    except AliceError as exc:
        raise AliceError(f"cannot read LoRA file: {exc}") from None
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise AliceError(f"{path}: metadata {LORA_METADATA_KEY!r} is not a JSON object; re-export the LoRA") from None
    return meta


def lora_samplers(path: str | Path, samplers: list[str]) -> list[str]:
    """Which of a model's samplers a LoRA file is for: an `alice finetune` LoRA names one ("rcm" for the student,
    "teacher"); any other LoRA applies to all."""
    wanted = read_lora_metadata(path).get("applies_to")
    if wanted is None:
        return list(samplers)
    if wanted not in samplers:
        raise AliceError(f"{path} is a LoRA for a model's {wanted!r} network and this model has only "
                         f"{', '.join(samplers)}; use the LoRA made for that network")
    return [wanted]


def with_lora(
    networks: Mapping[str, nn.Module],
    lora: str | Path | Mapping[str, torch.Tensor],
    strength: float = 1.0,
    copy: bool = True,
    merge: bool | None = None,
    on_report: Callable[[LoraReport], None] | None = None,
    model_name: str = "the model",
) -> dict[str, nn.Module]:
    """The one way a LoRA is applied to a model (CLI, nodes, app and training all come here).

    `networks` maps sampler name ("rcm", "teacher") to its DiT. The LoRA goes to the networks it is for (an
    `alice finetune` LoRA names one; others apply to all); a network serving several samplers is patched once. With
    `copy` (the default) the given networks stay unchanged, because hosts keep using them (a node graph's other
    branches, an app's cache) and the result holds patched copies; training patches in place (copy=False). A LoRA
    that matches no key of a network it is for is an error. `on_report` receives each network's report; by default
    unapplied keys are logged as a warning."""
    path = lora if isinstance(lora, (str, Path)) else None
    wanted = lora_samplers(path, list(networks)) if path is not None else list(networks)
    patched: dict[int, nn.Module] = {}
    for sampler, network in networks.items():
        if id(network) in patched or sampler not in wanted:
            continue
        if not isinstance(network, nn.Module):  # a Wan2.2 expert pair: each expert takes its own LoRA
            raise AliceError(f"{lora}: LoRAs on two-expert (Wan2.2 A14B) models are not supported yet; use one "
                             "with a single-DiT model")
        target = deepcopy(network) if copy else network
        report = apply_lora(target, lora, strength, merge)
        if report.matched == 0:
            raise AliceError(f"{report.source}: none of its {report.total} keys fit {model_name}; use a LoRA made for "
                             "this model (same Wan architecture and size)")
        if on_report is not None:
            on_report(report)
        elif report.unmatched:
            logger.warning(report.summary())
        patched[id(network)] = target
    return {sampler: patched.get(id(network), network) for sampler, network in networks.items()}


def write_loras(files: list[tuple[Path, Mapping[str, torch.Tensor], dict]]) -> list[Path]:
    """LoRA files with `alice_lora` metadata, each (path, state dict, metadata) placed exclusively; when one cannot be
    (a file of that name appeared meanwhile), the ones already written are removed again: all or none."""
    import json

    written: list[Path] = []
    try:
        for path, state, metadata in files:
            written.append(save_tensors(path, dict(state), {LORA_METADATA_KEY: json.dumps(metadata)}))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


# -- matching keys to the model -----------------------------------------------------------------------------------
def _strip_prefix(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_suffix(key: str) -> tuple[str, str] | None:
    for table in (LOW_RANK_SUFFIXES, DIFF_SUFFIXES):
        for suffix, role in sorted(table.items(), key=lambda kv: -len(kv[0])):
            if key.endswith(suffix):
                return key[: -len(suffix)], role
    return None


def _name_table(model: nn.Module) -> dict[str, str]:
    """Every spelling of each model tensor's owner -> its official name: dotted and kohya-underscored, in official
    and diffusers naming. Keys are names without the `.weight`/`.bias` ending (or a parameter's full name)."""
    table: dict[str, str] = {}
    for name, _ in model.named_parameters():
        for owner in (name.rsplit(".", 1)[0], name):
            as_module = diffusers_key_from_official(owner + ".weight").removesuffix(".weight")
            for spelling in (owner, diffusers_key_from_official(owner), as_module):
                table.setdefault(spelling, owner)
                table.setdefault(spelling.replace(".", "_"), owner)
    return table


def apply_lora(
    model: nn.Module,
    lora: str | Path | Mapping[str, torch.Tensor],
    strength: float = 1.0,
    merge: bool | None = None,
) -> LoraReport:
    """Apply a LoRA / difference file (path or state dict) to `model` with `strength`.

    merge=None merges into full-precision Linears and keeps separate adapters on fp8 / NF4 Linears; merge=True
    requires full-precision Linears; merge=False keeps every Linear update separate (removable with
    `remove_loras`). Norm, modulation and bias differences are always merged (those tensors are never quantised).
    """
    source = str(lora) if isinstance(lora, (str, Path)) else "LoRA state dict"
    state = read_state_dict(lora) if isinstance(lora, (str, Path)) else dict(lora)
    report = LoraReport(source, strength)
    table = _name_table(model)
    params = dict(model.named_parameters())

    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        split = _split_suffix(_strip_prefix(key))
        if split is None:
            report.unmatched[key] = "not a LoRA key"
            continue
        owner, role = split
        official = table.get(owner) or table.get(official_key_from_diffusers(owner + ".weight").removesuffix(".weight"))
        if official is None:
            report.unmatched[key] = "no such layer in the model"
            continue
        groups.setdefault(official, {})[role] = (key, value)

    with torch.no_grad():
        for owner, parts in groups.items():
            if parts.keys() & {"down", "up", "alpha"}:
                _apply_low_rank(model, owner, parts, strength, merge, report)
            for role in ("diff", "diff_b"):
                if role in parts:
                    _apply_diff(model, params, owner, role, parts[role], strength, merge, report)
    return report


def _linear(model: nn.Module, owner: str) -> nn.Module | None:
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return None
    return module if hasattr(module, "in_features") and hasattr(module, "out_features") else None


def _adapter_dtype(module: nn.Module) -> torch.dtype:
    return module.compute_dtype if is_quantized_linear(module) else module.weight.dtype


def _use_adapter(module: nn.Module, merge: bool | None, owner: str) -> bool:
    quantized = is_quantized_linear(module)
    if merge and quantized:
        raise AliceError(
            f"cannot merge a LoRA into the quantised layer {owner}; load the model in bf16/fp32 or use merge=False"
        )
    return quantized if merge is None else not merge


def _apply_low_rank(model, owner, parts, strength, merge, report: LoraReport) -> None:
    keys = [k for k, _ in parts.values()]
    module = _linear(model, owner)
    if "down" not in parts or "up" not in parts:
        for k in keys:
            report.unmatched[k] = "lora_down/lora_A without lora_up/lora_B (or the reverse)"
        return
    if module is None:
        for k in keys:
            report.unmatched[k] = f"{owner} is not a Linear layer"
        return
    down, up = parts["down"][1].float(), parts["up"][1].float()
    rank = down.shape[0]
    fits = (up.shape[0], down.shape[1]) == (module.out_features, module.in_features)
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != rank or not fits:
        for k in keys:
            report.unmatched[k] = (f"shape {tuple(up.shape)} @ {tuple(down.shape)} does not fit {owner} "
                                   f"[{module.out_features}, {module.in_features}]")
        return
    alpha = float(parts["alpha"][1]) if "alpha" in parts else float(rank)
    scale = strength * alpha / rank
    if _use_adapter(module, merge, owner):
        attach_adapter(module, LoraAdapter(up.to(_adapter_dtype(module)), down.to(_adapter_dtype(module)), scale))
        report.adapters.append(owner)
    else:
        weight = module.weight
        weight.copy_((weight.float() + scale * (up.to(weight.device) @ down.to(weight.device))).to(weight.dtype))
        report.merged.append(owner + ".weight")
    report.matched += len(keys)


def _apply_diff(model, params, owner, role, item, strength, merge, report: LoraReport) -> None:
    key, diff = item
    target = owner + (".bias" if role == "diff_b" else ".weight")
    if target not in params and role == "diff" and owner in params:
        target = owner  # a bare parameter such as `blocks.0.modulation`
    if target not in params:
        report.unmatched[key] = f"the model has no {target}"
        return
    param, module = params[target], _linear(model, owner)
    linear_weight = module is not None and target == owner + ".weight"
    # A quantised weight's storage shape is not its logical shape (NF4 packs two values per byte).
    shape = (module.out_features, module.in_features) if linear_weight else tuple(param.shape)
    if tuple(diff.shape) != shape:
        report.unmatched[key] = f"shape {tuple(diff.shape)} does not fit {target} {shape}"
        return
    if linear_weight and _use_adapter(module, merge, owner):
        attach_adapter(module, LoraAdapter(diff.to(_adapter_dtype(module)), None, strength))
        report.adapters.append(owner)
    else:
        param.copy_((param.float() + strength * diff.float().to(param.device)).to(param.dtype))
        report.merged.append(target)
    report.matched += 1
