"""The `alice` command line: one module per subcommand, each with `add_parser(subparsers)` and `run(args)`.

Parsing imports nothing heavy (no torch model code, no Gradio): every `run` imports what it needs, so `alice --help`
is instant and works in a library-only install. `alice app` imports the app (webui/) only when it runs.
"""

from __future__ import annotations

import argparse
import gc
import sys

from ..errors import user_message
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
    (about 0.4 s, a sixth of `alice generate`'s start-to-end time on a CPU)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as exc:  # a bug keeps its traceback; what a user can fix becomes one line
        message = user_message(exc)
        if message is None:
            raise
        print(f"alice: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alice: interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is None:
            gc.freeze()
