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


HEAVY = ("transformers", "diffusers", "gradio", "torch.distributed.fsdp", "torch.distributed.tensor")


def _console_generate(out: Path, before: str = "pass", after: str = "pass") -> subprocess.CompletedProcess:
    """`alice generate` as the console script runs it (main() without argv), with an atexit handler that reports the
    heavy modules imported and whether the heap was frozen; `before` runs first, `after` once main() returns."""
    script = (
        f"import atexit, gc, sys, threading; from alice_core.cli import main; {before}; "
        f"atexit.register(lambda: print('atexit', gc.get_freeze_count() > 0, "
        f"sorted(m for m in sys.modules if m in {HEAVY!r}))); "
        "sys.argv = ['alice', 'generate', 'a ball', '-o', sys.argv[1], '--frames', '5']; main(); print('after main'); "
        f"{after}"
    )
    return subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_generate_imports_only_what_it_runs_and_ends_the_process_at_once(tmp_path):
    # Start-up time: a generation with the bundled model reads no FSDP/DTensor (about 1 s to import), transformers
    # (MiniLM runs in plain torch), diffusers or Gradio. As the console script it ends the process once the video is
    # written: the atexit handlers run and stdout is flushed, nothing after main() runs (the interpreter's teardown
    # is skipped), and an error keeps its exit code.
    out = tmp_path / "a.gif"
    for expected in (0, 2):  # the second run finds the file there
        run = _console_generate(out)
        assert run.returncode == expected, run.stderr
        assert run.stdout.splitlines()[-1] == "atexit True []"
        assert "after main" not in run.stdout
    assert run.stdout.splitlines() == ["atexit True []"]
    assert run.stderr.strip() == f"alice: error: {out} already exists; choose another -o path or delete it"
    assert out.is_file()


def test_generate_with_a_thread_running_ends_the_process_as_usual(tmp_path):
    # A thread the host started (not daemon) is left to finish: the process ends through the interpreter's exit.
    thread = "done = threading.Event(); threading.Thread(target=lambda: (done.wait(), print('thread done'))).start()"
    run = _console_generate(tmp_path / "a.gif", before=thread, after="done.set()")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-3:] == ["after main", "thread done", "atexit True []"]


def test_importing_the_cli_freezes_what_it_imported_and_keeps_the_collector_as_it_was():
    # Importing torch with the collector paused, then frozen: later collections skip its objects.
    script = ("import gc, sys; gc.disable() if sys.argv[1] == 'off' else None; import alice_core.cli; "
              "print(gc.isenabled(), 'torch' in sys.modules, gc.get_freeze_count() > 100_000)")
    for collector, enabled in (("on", "True"), ("off", "False")):
        run = subprocess.run([sys.executable, "-c", script, collector], capture_output=True, text=True, env=ENV,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [enabled, "True", "True"]


def test_main_with_arguments_leaves_the_heap_unfrozen():
    import gc

    before = gc.get_freeze_count()
    assert build_parser() and __import__("alice_core.cli").cli.main(["models"]) == 0
    assert gc.get_freeze_count() == before
