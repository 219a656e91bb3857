"""`alice app`: start the web app (webui/). The app and Gradio are imported only when it runs: the library's command
line works without them (`pip install -e .[app]` adds them)."""

from __future__ import annotations

import argparse
import importlib

from ..errors import AliceError
from ..loading.precision import PRECISION_NAMES
from ..models.attention import ATTENTION_BACKENDS, DEFAULT_ATTENTION


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("app", help="start the local web app (http://127.0.0.1:7860 by default)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                        "network)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off unless asked)")
    p.add_argument("--model", default=None,
                   help="model selected at start: a bundled name (default alice-tiny), a bundle in the models "
                        "folder, or a bundle folder path")
    p.add_argument("--precision", choices=PRECISION_NAMES, default="fp32",
                   help="on a CPU fp8 runs 2-3x slower than bf16 (weights upcast every call): it saves memory, not time")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default=DEFAULT_ATTENTION,
                   help="attention kernel of the DiTs (flash / sage fall back to sdpa when missing)")
    p.add_argument("--blocks-on-gpu", type=int, default=None, metavar="K",
                   help="block swap: keep K DiT blocks on the GPU, stream the others from CPU memory")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--models-dir", default=None,
                   help="folder of model bundles offered in the app (default: $ALICE_MODELS_DIR or "
                        "~/.cache/alice/models)")
    p.add_argument("--output-dir", default=None, help="where generated videos are saved (default: a new temp folder)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        launch = importlib.import_module("webui.app").launch
    except ModuleNotFoundError as exc:
        if exc.name not in ("webui", "gradio") and not str(exc.name).startswith(("webui.", "gradio.")):
            raise
        raise AliceError("`alice app` needs the app and its extra: from the repository, `pip install -e .[app]`") from None
    if args.blocks_on_gpu is not None and args.blocks_on_gpu < 1:
        raise AliceError(f"--blocks-on-gpu {args.blocks_on_gpu}: give at least 1 block (or leave it out: all blocks)")
    from ..models.runtime import DiTRuntime

    launch(host=args.host, port=args.port, share=args.share, model=args.model, precision=args.precision,
           device=args.device, output_dir=args.output_dir, models_dir=args.models_dir,
           runtime=DiTRuntime(args.attention, args.blocks_on_gpu, args.compile))
    return 0
