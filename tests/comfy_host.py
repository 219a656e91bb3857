"""The node test harness: every node runs the way ComfyUI's executor runs it.

ComfyUI (0.33, read from its code: execution.py, nodes.py, comfy/utils.py, comfy/model_management.py, main.py):
- `PromptExecutor.execute_async` runs the whole prompt inside `torch.inference_mode()`;
- before each node it calls `nodes.before_node_execution()`, which raises `InterruptProcessingException` (a
  BaseException) when Cancel was pressed, and clears the flag;
- the node runs with an executing context (`comfy_execution.utils.get_executing_context()`: prompt and node id);
- `comfy.utils.ProgressBar` forwards updates to a global hook (main.py's `hijack_progress`), which first calls
  `throw_exception_if_processing_interrupted()` and then sends the progress to the browser; the bar forwards the
  first and the final update always, others only 0.1 s and 0.5 % after the last forwarded one;
- `PromptServer.instance.send_progress_text(text, node_id, client_id)` shows text on a running node.

`ComfyHost` provides those modules (`comfy.utils`, `comfy.model_management`, `comfy.cli_args`, `server`,
`comfy_execution.utils`, optionally `folder_paths`) while a node runs, and records what the browser would receive.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "alice_comfy_pack"
MODEL_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


def load_pack(name: str = PACK_NAME):
    """Import the repository root the way ComfyUI imports a custom-node folder: a package from its __init__.py."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    spec.loader.exec_module(pack)
    return pack


class LoadImage:
    """ComfyUI's core Load Image node (nodes.py), which the shared image-to-video workflow starts from: a file of
    the input folder -> IMAGE [frames, H, W, 3] float32 in 0..1 (every frame of an animated file, EXIF-rotated,
    RGB) and MASK [frames, H, W] (1 - alpha; 64x64 zeros without alpha). Its upload button adds a widget value."""

    DISPLAY_NAME = "Load Image"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        folder_paths = sys.modules.get("folder_paths")  # absent when only the widget layout is read
        folder = Path(folder_paths.get_input_directory()) if folder_paths else None
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        from PIL import Image, ImageOps, ImageSequence

        picture = Image.open(Path(sys.modules["folder_paths"].get_input_directory()) / image)
        images, masks = [], []
        for frame in ImageSequence.Iterator(picture):
            frame = ImageOps.exif_transpose(frame)
            images.append(torch.from_numpy(np.array(frame.convert("RGB")).astype(np.float32) / 255.0)[None])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha)[None])
            else:
                masks.append(torch.zeros((1, 64, 64), dtype=torch.float32))
        return torch.cat(images), torch.cat(masks)


CORE_NODES = {"LoadImage": LoadImage}  # ComfyUI's own nodes that shared workflows use


def node_classes() -> dict:
    """What the executor can run: the pack's nodes and the core nodes above."""
    return {**load_pack().NODE_CLASS_MAPPINGS, **CORE_NODES}


class InterruptProcessingException(BaseException):
    """comfy.model_management's: a BaseException, so a node's `except Exception` does not swallow a Cancel."""


class ExecutionContext(NamedTuple):
    prompt_id: str
    node_id: str
    list_index: int | None


class ComfyFolders:
    """folder_paths for a ComfyUI folder tree: models/<kind>, input, output, user."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def module(self) -> SimpleNamespace:
        models = self.root / "models"

        def files(kind: str) -> list[str]:
            folder = models / kind
            found = folder.rglob("*") if folder.is_dir() else []
            return sorted(str(p.relative_to(folder)) for p in found if p.is_file() and p.suffix in MODEL_SUFFIXES)

        def full_path(kind: str, name: str) -> str | None:
            path = models / kind / name
            return str(path) if path.is_file() else None

        return SimpleNamespace(
            get_folder_paths=lambda kind: [str(models / kind)], get_filename_list=files, get_full_path=full_path,
            get_user_directory=lambda: str(self.root / "user"), get_input_directory=lambda: str(self.root / "input"),
            get_output_directory=lambda: str(self.root / "output"), get_save_image_path=self._save_image_path,
        )

    @staticmethod
    def _save_image_path(prefix: str, output_dir: str) -> tuple[str, str, int, str, str]:
        """ComfyUI's naming: <subfolder>/<name>_<counter:05>_ with the counter past existing files."""
        subfolder, name = str(Path(prefix).parent).removeprefix("."), Path(prefix).name
        folder = Path(output_dir) / subfolder
        if not folder.resolve().is_relative_to(Path(output_dir).resolve()):
            raise Exception("Saving image outside the output folder is not allowed.")
        folder.mkdir(parents=True, exist_ok=True)
        counters = [int(p.name[len(name) + 1:].split("_")[0]) for p in folder.iterdir()
                    if p.name.startswith(name + "_") and p.name[len(name) + 1:].split("_")[0].isdigit()]
        return str(folder), name, max(counters, default=0) + 1, subfolder, prefix


class ComfyHost:
    """ComfyUI's executor conditions around each node. `cancel_at(value)` presses Cancel when a progress bar
    reaches `value` (before the hook sees that update when `during_update`, after it otherwise)."""

    def __init__(self, folders: ComfyFolders | None = None, throttle: bool = True, disable_metadata: bool = False,
                 device: str = "cpu") -> None:
        self.folders, self.throttle = folders, throttle
        self.interrupted = False
        self.updates: list[tuple[str, int, int]] = []   # (node, value, total): every ProgressBar update of a node
        self.progress: list[tuple[str, int, int]] = []  # what the hook forwarded to the browser
        self.previews: list[Any] = []                   # the preview each forwarded update carried (or None)
        self.texts: list[tuple[str, str, str]] = []     # (text, node, client) from send_progress_text
        self.cancel_value: int | None = None
        self.cancel_during_update = False
        self.client_id = "client-1"
        self._context: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar("ctx", default=None)
        self.modules = self._modules(disable_metadata, torch.device(device))

    # ------------------------------------------------------------------------------------------ the UI's side
    def press_cancel(self) -> None:
        """The Cancel button (nodes.interrupt_processing)."""
        self.interrupted = True

    def cancel_at(self, value: int, during_update: bool = False) -> ComfyHost:
        self.cancel_value, self.cancel_during_update = value, during_update
        return self

    # ------------------------------------------------------------------------------------------ ComfyUI's modules
    def _throw_if_interrupted(self) -> None:
        if self.interrupted:
            self.interrupted = False
            raise InterruptProcessingException()

    def _hook(self, value: int, total: int, preview: Any, node_id: str | None = None) -> None:
        context = self._context.get()
        self._throw_if_interrupted()
        self.progress.append((node_id or (context.node_id if context else ""), value, total))
        self.previews.append(preview)

    def _modules(self, disable_metadata: bool, device: torch.device) -> dict[str, Any]:
        host = self

        class ProgressBar:
            def __init__(self, total: int, node_id: str | None = None) -> None:
                self.total, self.current, self.node_id = total, 0, node_id
                self.last_sent, self.last_time = -1, 0.0

            def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
                if total is not None:
                    self.total = total
                value = min(value, self.total)
                self.current = value
                context = host._context.get()
                host.updates.append((context.node_id if context else "", value, self.total))
                pressed = host.cancel_value is not None and value == host.cancel_value
                if pressed and host.cancel_during_update:
                    host.press_cancel()
                now = time.perf_counter()
                first, final = self.last_sent < 0, value >= self.total
                changed = (value - max(0, self.last_sent)) / self.total * 100 if self.total > 0 else 100
                if (not host.throttle or preview is not None or first or final
                        or (now - self.last_time >= 0.1 and changed >= 0.5)):
                    self.last_sent, self.last_time = value, now
                    host._hook(value, self.total, preview, node_id=self.node_id)
                if pressed and not host.cancel_during_update:
                    host.press_cancel()

            def update(self, value: int) -> None:
                self.update_absolute(self.current + value)

        utils = SimpleNamespace(ProgressBar=ProgressBar)
        mm = SimpleNamespace(
            InterruptProcessingException=InterruptProcessingException,
            interrupt_current_processing=lambda value=True: setattr(self, "interrupted", value),
            processing_interrupted=lambda: self.interrupted,
            throw_exception_if_processing_interrupted=self._throw_if_interrupted,
            get_torch_device=lambda: device, unet_offload_device=lambda: torch.device("cpu"),
        )
        cli_args = SimpleNamespace(args=SimpleNamespace(disable_metadata=disable_metadata))
        server = SimpleNamespace(client_id=self.client_id, last_node_id=None,
                                 send_progress_text=lambda text, node, sid: self.texts.append((text, node, sid)))
        execution_utils = SimpleNamespace(get_executing_context=self._context.get)
        comfy = ModuleType("comfy")
        comfy.utils, comfy.model_management, comfy.cli_args = utils, mm, cli_args
        modules = {"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm, "comfy.cli_args": cli_args,
                   "server": SimpleNamespace(PromptServer=SimpleNamespace(instance=server)),
                   "comfy_execution": SimpleNamespace(utils=execution_utils),
                   "comfy_execution.utils": execution_utils}
        if self.folders is not None:
            modules["folder_paths"] = self.folders.module()
        return modules

    @contextlib.contextmanager
    def installed(self) -> Iterator[ComfyHost]:
        """The pack sees ComfyUI's modules (its host adapter and lazy imports), restored afterwards."""
        node_classes()
        host_module = load_pack().nodes.host
        saved_attrs = {name: getattr(host_module, name) for name in ("comfy_utils", "comfy_mm", "folder_paths")}
        saved_modules = {name: sys.modules.get(name) for name in self.modules}
        host_module.comfy_utils = self.modules["comfy.utils"]
        host_module.comfy_mm = self.modules["comfy.model_management"]
        host_module.folder_paths = self.modules.get("folder_paths")
        sys.modules.update(self.modules)
        try:
            yield self
        finally:
            for name, value in saved_attrs.items():
                setattr(host_module, name, value)
            for name, module in saved_modules.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

    # ------------------------------------------------------------------------------------------ the executor
    def run(self, node_type: str, node_id: str = "1", prompt_id: str = "prompt-1", **inputs: Any) -> Any:
        """One node as the executor runs it: the Cancel check before it, its executing context, inference mode."""
        cls = node_classes()[node_type]
        with self.installed():
            token = self._context.set(ExecutionContext(prompt_id, node_id, None))
            try:
                self._throw_if_interrupted()  # nodes.before_node_execution()
                with torch.inference_mode():
                    return getattr(cls(), cls.FUNCTION)(**inputs)
            finally:
                self._context.reset(token)

    def execute(self, prompt: dict, extra_pnginfo: dict | None = None) -> tuple[dict, dict]:
        """An API-format graph: per node in link order, links resolved to earlier outputs, the hidden inputs it
        declares added. Returns ({node_id: outputs}, {node_id: ui})."""
        self.interrupted = False  # execute_async starts every prompt with nodes.interrupt_processing(False)
        outputs, ui = {}, {}
        for nid in topological_order(prompt):
            cls = node_classes()[prompt[nid]["class_type"]]
            inputs = {k: outputs[v[0]][v[1]] if isinstance(v, list) else v for k, v in prompt[nid]["inputs"].items()}
            hidden = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo}
            inputs.update({name: hidden[kind] for name, kind in cls.INPUT_TYPES().get("hidden", {}).items()})
            result = self.run(prompt[nid]["class_type"], node_id=nid, **inputs)
            if isinstance(result, dict):
                ui[nid], result = result.get("ui"), result["result"]
            outputs[nid] = result
        return outputs, ui


def topological_order(prompt: dict) -> list[str]:
    """Kahn's algorithm over the [node_id, output_index] links."""
    needs = {nid: set() for nid in prompt}
    for nid, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list):
                if value[0] not in prompt:
                    raise ValueError(f"node {nid} links to missing node {value[0]}")
                needs[nid].add(value[0])
    ready = deque(sorted((n for n, deps in needs.items() if not deps), key=int))
    order = []
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for other, deps in needs.items():
            if nid in deps:
                deps.discard(nid)
                if not deps:
                    ready.append(other)
    if len(order) != len(prompt):
        raise ValueError(f"the graph has a cycle through nodes {sorted(set(prompt) - set(order))}")
    return order


def run_node(node_type: str, host: ComfyHost | None = None, **inputs: Any) -> Any:
    """One node under ComfyUI's executor conditions (a fresh host with standalone model folders by default)."""
    return (host or ComfyHost()).run(node_type, **inputs)

