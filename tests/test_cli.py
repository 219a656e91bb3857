"""The `alice` command as users run it: the installed console script, every subcommand's --help."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alice_core.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the installed command, importing this checkout


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path the parser knows (`()`, `("generate",)`, `("train", "teacher")`, ...)."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _subcommand_paths(sub, (*prefix, name))
    return paths


def alice_command() -> str:
    found = shutil.which("alice", path=str(Path(sys.executable).parent)) or shutil.which("alice")
    if found is None:
        pytest.fail("the `alice` command is not installed; run README's set-up (pip install -e .)")
    return found


COMMANDS = _subcommand_paths(build_parser())


def test_every_command_is_covered():
    top = {path[0] for path in COMMANDS if path}
    assert {"generate", "models", "train", "bench", "finetune", "download", "convert", "app"} <= top
    assert ("train", "distill") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "alice")
def test_help_works_for_every_command(path):
    run = subprocess.run([alice_command(), *path, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: alice {' '.join(path)}".rstrip()), run.stdout[:200]
    assert "Traceback" not in run.stderr and run.stderr == ""


def test_parsing_imports_neither_the_app_nor_gradio():
    script = ("import sys; from alice_core.cli import build_parser; build_parser(); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('webui', 'gradio', 'nodes')))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_app_without_gradio_says_how_to_install_it():
    # As in a library-only install (requirements.txt without the [app] extra): gradio cannot be imported.
    script = "import sys; sys.modules['gradio'] = None; from alice_core.cli import main; sys.exit(main(['app']))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "alice: error: `alice app` needs the app and its extra: from the repository, " \
                                 "`pip install -e .[app]`"


def test_generate_imports_only_what_it_runs_and_skips_the_last_collection(tmp_path):
    # Start-up time: a generation with the bundled model reads no FSDP/DTensor (about 1 s to import), transformers
    # (MiniLM runs in plain torch), diffusers or Gradio; as the console script it freezes the heap on its way out.
    script = (
        "import gc, sys; from alice_core.cli import main; "
        f"sys.argv = ['alice', 'generate', 'a ball', '-o', {str(tmp_path / 'a.gif')!r}, '--frames', '5']; rc = main(); "
        "heavy = ('transformers', 'diffusers', 'gradio', 'torch.distributed.fsdp', 'torch.distributed.tensor'); "
        "print(rc, gc.get_freeze_count() > 0, sorted(m for m in sys.modules if m in heavy))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "0 True []"


def test_main_with_arguments_leaves_the_heap_unfrozen():
    import gc

    before = gc.get_freeze_count()
    assert build_parser() and __import__("alice_core.cli").cli.main(["models"]) == 0
    assert gc.get_freeze_count() == before
