"""The shared node shape: ComfyUI's V1 class contract plus input checks that name the node, the input and the fix.

ComfyUI validates widget values itself before running a graph; the same checks here make the nodes safe to call
from anywhere else (scripts, tests, another app) and catch wrong things arriving on a wire.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from alice_core.errors import AliceError
from alice_core.models.clip_vision import ClipImageEncoder
from alice_core.models.interfaces import TextEncoder, VideoAutoencoder
from alice_core.pipeline import Conditioning, VideoPipeline

CATEGORY = "Alice"


def _is_latent(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("samples"), torch.Tensor) and value["samples"].ndim == 5


def _is_image(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[-1] == 3 and value.is_floating_point()


# What may arrive on each wire type, and how to describe it in an error.
SOCKET_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ALICE_MODEL": (lambda v: isinstance(v, VideoPipeline), "an Alice model (from Alice Model Loader)"),
    "ALICE_TEXT_ENCODER": (lambda v: isinstance(v, TextEncoder), "a text encoder (from Alice Text Encoder Loader)"),
    "ALICE_CONDITIONING": (lambda v: isinstance(v, Conditioning), "encoded prompts (from Alice Prompt Encode)"),
    "ALICE_VAE": (lambda v: isinstance(v, VideoAutoencoder), "an autoencoder (from Alice VAE Loader)"),
    "ALICE_CLIP_VISION": (lambda v: isinstance(v, ClipImageEncoder), "a CLIP vision encoder (from Alice CLIP Vision "
                                                                     "Loader)"),
    "LATENT": (_is_latent, "a video LATENT {'samples': tensor [B, C, F, H, W]}"),
    "IMAGE": (_is_image, "an IMAGE batch (float tensor [frames, height, width, 3] in 0..1)"),
}


class AliceNode:
    """Subclasses define INPUT_TYPES, RETURN_TYPES, DISPLAY_NAME and `execute(**inputs)`."""

    CATEGORY: ClassVar[str] = CATEGORY
    FUNCTION: ClassVar[str] = "run"
    DISPLAY_NAME: ClassVar[str]
    RETURN_TYPES: ClassVar[tuple[str, ...]]

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        raise NotImplementedError

    def run(self, **inputs: Any) -> Any:
        try:
            return self.execute(**check_inputs(self.DISPLAY_NAME, self.INPUT_TYPES(), inputs))
        except AliceError as exc:
            raise AliceError(in_node_words(self.DISPLAY_NAME, str(exc), self.INPUT_TYPES())) from None

    def execute(self, **inputs: Any) -> Any:
        raise NotImplementedError


# The library's errors name the fix as a CLI flag; in a node the same setting is an input (guidance is 'cfg').
FLAG_INPUTS = {"guidance": "cfg", "sampler": None}
_FLAG = re.compile(r"use --([a-z][a-z-]*) ([^;]+)$")


def in_node_words(node: str, message: str, spec: dict) -> str:
    """A library error as the node says it: the node named first, a `use --flag VALUE` fix as the input to set."""
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    found = _FLAG.search(message)
    if found:
        setting, value = found.group(1).replace("-", "_"), found.group(2).strip()
        name = FLAG_INPUTS.get(setting, setting)
        if name in inputs:
            message = f"{message[:found.start()]}set input '{name}' to {value}"
        elif setting == "sampler":
            message = f"{message[:found.start()]}use the Alice {'rCM' if value == 'rcm' else 'Teacher'} Sampler"
    return message if message.startswith(f"{node}:") else f"{node}: {message}"


def check_inputs(node: str, spec: dict, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs checked against an INPUT_TYPES spec; integral floats given to INT inputs become ints."""
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    hidden = spec.get("hidden", {})
    unknown = sorted(set(inputs) - set(declared) - set(hidden))
    if unknown:
        raise AliceError(f"{node}: unknown input(s) {', '.join(unknown)}; its inputs are {', '.join(declared)}")
    missing = [name for name in spec.get("required", {}) if name not in inputs]
    if missing:
        raise AliceError(f"{node}: input(s) {', '.join(missing)} missing; connect or set them")
    checked = dict(inputs)
    for name, value in inputs.items():
        if name in declared:
            checked[name] = _check_value(node, name, declared[name], value)
    return checked


def _check_value(node: str, name: str, input_spec: tuple, value: Any) -> Any:
    kind, options = input_spec[0], (input_spec[1] if len(input_spec) > 1 else {})
    where = f"{node}: input '{name}'"
    if isinstance(kind, list):  # a combo: one of the listed choices
        if value not in kind:
            shown = ", ".join(map(str, kind[:12])) + (", ..." if len(kind) > 12 else "")
            raise AliceError(f"{where} is {value!r}, which is not available; choose one of: {shown or '(none found)'}")
        return value
    if kind == "INT":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise AliceError(f"{where} must be a whole number, got {value!r}")
        return _in_range(where, value, options)
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise AliceError(f"{where} must be a number, got {value!r}")
        return _in_range(where, float(value), options)
    if kind == "STRING":
        if not isinstance(value, str):
            raise AliceError(f"{where} must be text, got {type(value).__name__}")
        return value
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise AliceError(f"{where} must be true or false, got {value!r}")
        return value
    accepts, description = SOCKET_CHECKS[kind]
    if not accepts(value):
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise AliceError(f"{where} must be {description}, got {got}; check what is connected to it")
    return value


def _in_range(where: str, value: float, options: dict) -> float:
    low, high = options.get("min"), options.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise AliceError(f"{where} must be between {low} and {high}, got {value}")
    return value
