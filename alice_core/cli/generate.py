"""`alice generate PROMPT -o FILE` and `alice models`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import AliceError
from ..loading.precision import PRECISION_NAMES
from ..models.attention import ATTENTION_BACKENDS, DEFAULT_ATTENTION

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", required=True, help="output file: .mp4, .webm or .gif (never overwritten)")
    p.add_argument("--model", default=None, help="bundled model name (default alice-tiny), bundle folder or checkpoint file")
    p.add_argument("--low-noise-model", default=None, metavar="LOW",
                   help="Wan2.2 A14B: the low-noise expert; --model is then the high-noise one")
    p.add_argument("--boundary", type=float, default=None,
                   help="two-expert models: time (0..1) below which the low-noise expert runs (Wan: 0.875 T2V, 0.9 I2V)")
    p.add_argument("--image", default=None, metavar="START.png", help="image-to-video: the first frame")
    p.add_argument("--clip-vision", default=None, metavar="PATH",
                   help="Wan2.1 I2V: the CLIP vision encoder (clip_vision_h.safetensors or a transformers folder)")
    p.add_argument("--vae", default=None, help="Wan VAE file: Wan2.1, or Wan2.2 for TI2V-5B (for checkpoint files)")
    p.add_argument("--text-encoder", default=None, help="text encoder: 'minilm' or a umT5 folder")
    p.add_argument("--sampler", choices=("rcm", "teacher"), default=None, help="default: the model's (rcm for alice-tiny)")
    p.add_argument("--steps", type=int, default=None, help="rcm: 1-4 (default 4); teacher: default 50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="4k+1 frames (model default if omitted)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--fps", type=int, default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guidance", default=None, metavar="W|HIGH,LOW",
                   help="teacher CFG scale; two-expert models take one per expert as HIGH,LOW "
                        "(default: Wan2.2's, T2V-A14B 4,3, I2V-A14B 3.5)")
    p.add_argument("--shift", type=float, default=None, help="teacher flow shift")
    p.add_argument("--sigma-max", type=float, default=None, help="rCM starting sigma (default 80)")
    p.add_argument("--ode", action="store_true", help="rCM: deterministic ODE steps instead of re-noising")
    p.add_argument("--precision", choices=PRECISION_NAMES, default="fp32",
                   help="fp8_* and nf4 store weights quantised (nf4 needs bitsandbytes); on a CPU fp8 runs 2-3x slower "
                        "than bf16 (each weight is upcast at every call): it saves memory, not time")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default=DEFAULT_ATTENTION,
                   help="attention kernel; flash (flash-attn) and sage (sageattention) need their package and a GPU, "
                        "else sdpa is used (one line says so)")
    p.add_argument("--blocks-on-gpu", type=int, default=None, metavar="K",
                   help="block swap: keep K DiT blocks on --device and stream the others from CPU memory")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block (slow first step)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="apply a LoRA (kohya, PEFT/diffusers or lightx2v diff format); repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--crf", type=int, default=19, help="mp4/webm quality (lower is better)")
    p.add_argument("--download", action="store_true", help="fetch a catalogue model (see alice download --list) if missing")
    p.set_defaults(run=run, ends_process=True)  # the video is placed and closed before run returns
    sub.add_parser("models", help="list bundled models").set_defaults(run=run_models)


def _check_output_path(output: str) -> Path:
    from ..limits import check_output_location, expand_path

    path = expand_path(output, "-o")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise AliceError(f"output {path} must end in {', '.join(VIDEO_SUFFIXES)}")
    check_output_location(path, "-o")
    if path.exists():
        raise AliceError(f"{path} already exists; choose another -o path or delete it")
    return path


def _parse_lora_arg(spec: str) -> tuple[str, float]:
    """(path, strength) of a --lora PATH[:STRENGTH], checked readable before any model is loaded."""
    from ..limits import check_finite, expand_path
    from ..loading.lora import read_lora_metadata

    path, _, strength = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
    try:
        value = float(strength) if strength else 1.0
    except ValueError:
        raise AliceError(f"--lora {spec!r}: strength must be a number, e.g. --lora my_lora.safetensors:0.8") from None
    check_finite(value, f"--lora {spec!r} strength")
    file = expand_path(path, "--lora")
    if not file.is_file():
        raise AliceError(f"--lora {path}: file not found; pass a LoRA .safetensors (or .pt) file")
    read_lora_metadata(file)  # a corrupt header fails here, in seconds, not after loading the model
    return str(file), value


def _parse_guidance(text: str | None) -> tuple[float | None, float | None]:
    """--guidance W (both experts) or HIGH,LOW: (guidance, low-noise expert's guidance or None)."""
    if text is None:
        return None, None
    parts = text.split(",")
    try:
        if len(parts) > 2:
            raise ValueError
        values = [float(part) for part in parts]
    except ValueError:
        raise AliceError(f"--guidance {text!r}: give one number, or HIGH,LOW for the two experts, e.g. "
                         f"--guidance 4,3") from None
    return values[0], values[1] if len(values) == 2 else None


def _read_start_image(path: str):
    """--image: an RGB picture as uint8 [H, W, 3]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise AliceError(f"--image {path}: file not found")
    try:
        with Image.open(file) as picture:
            return np.asarray(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise AliceError(f"--image {path}: not a readable picture ({exc}); use a PNG or JPEG") from None


def run(args: argparse.Namespace) -> int:
    from ..limits import parse_device
    from ..loading.experts import find_expert_pair
    from ..pipeline import GenerationSettings, load_pipeline
    from ..preflight import preflight
    from .download import catalogue_pipeline_args

    # Everything that needs no weights is checked first: a bad flag costs no loading time.
    output = _check_output_path(args.output)
    parse_device(args.device)
    loras = [_parse_lora_arg(spec) for spec in args.lora]
    found = catalogue_pipeline_args(args.model, args.download)  # None for bundles and checkpoint paths
    if found:
        args.model = found["model"]
        args.vae = args.vae or found["vae"]
        args.text_encoder = args.text_encoder or found["text_encoder"]
        args.low_noise_model = args.low_noise_model or found["low_noise_model"]
        args.clip_vision = args.clip_vision or found["clip_vision"]
        if found["lora"]:  # the model's own LoRA (lightx2v) first, then the user's
            loras.insert(0, (found["lora"], 1.0))
    if loras and (args.low_noise_model or find_expert_pair(args.model)):
        raise AliceError("--lora: LoRAs on two-expert (Wan2.2 A14B) models are not supported yet (each expert "
                         "would need its own); drop --lora")
    if args.blocks_on_gpu is not None and args.blocks_on_gpu < 1:
        raise AliceError(f"--blocks-on-gpu {args.blocks_on_gpu}: give at least 1 block (or leave it out: all blocks)")
    from ..models.runtime import DiTRuntime

    runtime = DiTRuntime(args.attention, args.blocks_on_gpu, args.compile)
    guidance, guidance_low = _parse_guidance(args.guidance)
    image = _read_start_image(args.image) if args.image else None
    settings = GenerationSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, sampler=args.sampler,
        steps=args.steps, width=args.width, height=args.height, frames=args.frames, fps=args.fps,
        sigma_max=args.sigma_max, ode=args.ode, guidance=guidance, shift=args.shift, boundary=args.boundary,
        guidance_low=guidance_low, image=Path(args.image).name if args.image else None,
    )
    defaults = found["defaults"] if found else None
    resolved = preflight(settings, args.model, args.precision, args.vae, args.text_encoder, args.device,
                         args.low_noise_model, defaults, args.clip_vision)
    # Only the network of the sampler that runs is read, unless a LoRA (which may be for the other one) comes.
    pipe = load_pipeline(args.model, args.precision, args.vae, args.text_encoder, args.device, args.low_noise_model,
                         args.boundary, defaults=defaults, runtime=runtime, clip_vision=args.clip_vision,
                         samplers=None if loras else (resolved.sampler,))
    for path, strength in loras:
        # In place: nothing else uses the base networks in this process.
        pipe = pipe.with_lora(path, strength, copy=False, on_report=lambda r: print(r.summary(), file=sys.stderr))

    from tqdm import tqdm

    bar = tqdm(total=None, desc="sampling", unit="step", file=sys.stderr, leave=False)

    def progress(done: int, total: int, _x0) -> None:
        bar.total = total
        bar.update(1)

    try:
        video = pipe.generate(settings, progress=progress, image=image)
    finally:
        bar.close()
    path = pipe.save(video, output, crf=args.crf)
    t = video.timings
    print(path)
    print(
        f"text encoding {t['text_encoding']:.2f}s, sampling {t['sampling']:.2f}s "
        f"({video.settings.sampler}, {video.settings.steps} steps), decoding {t['decoding']:.2f}s"
    )
    return 0


def run_models(_args: argparse.Namespace) -> int:
    from ..bundle import bundled_models

    for name in bundled_models():
        print(name)
    return 0
