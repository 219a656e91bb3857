"""ComfyUI entry point: this repository cloned into ComfyUI/custom_nodes/ is a node pack (V1 API).

ComfyUI imports this file as a package and reads NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS (from nodes/).
They are built on first access (PEP 562 module __getattr__), so importing this file outside ComfyUI costs nothing
and cannot fail.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

_ROOT = Path(__file__).resolve().parent


def _ensure_alice_core() -> None:
    """Use the alice_core next to this file when it is not installed (a plain git clone into custom_nodes/).

    Only that one name is registered; the repository root is not put on sys.path, where its `nodes` folder
    would clash with ComfyUI's own `nodes` module."""
    if "alice_core" in sys.modules or importlib.util.find_spec("alice_core") is not None:
        return
    spec = importlib.util.spec_from_file_location("alice_core", _ROOT / "alice_core" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["alice_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["alice_core"]
        raise


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _ensure_alice_core()
    nodes = importlib.import_module(".nodes", __name__)  # relative: ComfyUI has a top-level `nodes` module
    globals().update({key: getattr(nodes, key) for key in __all__})
    return globals()[name]
