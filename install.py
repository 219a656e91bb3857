"""Install what the Alice nodes need into the Python environment that runs ComfyUI.

ComfyUI-Manager runs this file after installing requirements.txt; after a plain `git clone` into
ComfyUI/custom_nodes/, run it with ComfyUI's Python: `python install.py` (`--dry-run` only prints).

The list comes from pyproject.toml's [project].dependencies. Only missing or too-old packages are installed, in one
pip call, and torch never is: ComfyUI's own torch build (CUDA, ROCm, MPS, CPU) must stay as it is. The `alice_core`
library itself needs no install: the package's __init__.py uses the copy next to it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEFT_TO_COMFYUI = {"torch"}


def requirements(pyproject: Path = HERE / "pyproject.toml") -> list[str]:
    """[project].dependencies of pyproject.toml."""
    text = pyproject.read_text()
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the list is plain quoted strings
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
        return re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return list(tomllib.loads(text)["project"].get("dependencies", []))


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)


def _satisfied(requirement: str, installed: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without `packaging`, any installed version counts
        return True
    return Requirement(requirement).specifier.contains(installed, prereleases=True)


def missing_requirements(required: list[str]) -> list[str]:
    """The requirements this environment lacks or has too old, leaving torch to ComfyUI."""
    missing = []
    for requirement in required:
        name = _name(requirement)
        if name.lower() in LEFT_TO_COMFYUI:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if not _satisfied(requirement, installed):
            print(f"[alice] {name} {installed} is installed; needs {requirement}")
            missing.append(requirement)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print what would be installed, install nothing")
    args = parser.parse_args(argv)
    missing = missing_requirements(requirements())
    if not missing:
        print("[alice] all requirements are installed")
        return 0
    command = [sys.executable, "-m", "pip", "install", *missing]
    print("[alice] " + " ".join(command))
    if args.dry_run:
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
