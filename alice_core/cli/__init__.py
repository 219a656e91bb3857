"""The `alice` command line: one module per subcommand, each with `add_parser(subparsers)` and `run(args)`.

Parsing imports nothing heavy (no torch model code, no Gradio): every `run` imports what it needs, so `alice --help`
is instant and works in a library-only install. `alice app` imports the app (webui/) only when it runs.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import user_message


@contextmanager
def imports_frozen() -> Iterator[None]:
    """No garbage collection while the body imports, then the heap is frozen (`gc.freeze`: what is alive now is
    kept out of every later collection; the console script imports this module first). Importing torch (through
    the subcommands' modules, below) makes about a million long-lived objects; the collector, run by allocation
    counts, walked them again and again as they were made (~80 ms of a one-second import on a CPU) and again in
    each later full collection (~60 ms each)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


with imports_frozen():
    from . import app, convert, download, finetune, generate, train

SUBCOMMANDS = (generate, train, finetune, download, convert, app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alice", description="Alice: fast 4-step text-to-video")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Called without argv (the console script, python -m alice_core) the process ends on return,
    so the heap is frozen first: the interpreter's last garbage collection over torch's objects is skipped
    (about 0.4 s on a CPU); a command that sets `ends_process` ends the process here (`_end_process`)."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except Exception as exc:  # a bug keeps its traceback; what a user can fix becomes one line
        message = user_message(exc)
        if message is None:
            raise
        print(f"alice: error: {message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("alice: interrupted", file=sys.stderr)
        code = 130
    finally:
        if argv is None:
            gc.freeze()
    if argv is None and getattr(args, "ends_process", False):
        _end_process(code)
    return code


def _end_process(code: int) -> None:
    """End the process now, for a command whose files are written and closed when it returns: the atexit handlers
    run and the standard streams are flushed, but the interpreter's teardown of torch's modules is skipped (0.1-0.2
    s, a tenth of `alice generate` on a CPU). With a thread of its own still running, the process ends as usual."""
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the interpreter's own exit reports it
        return
    os._exit(code)
