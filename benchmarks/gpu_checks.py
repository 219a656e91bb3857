"""Every GPU measurement of issue 17 in one command (about 4-6 minutes on an H200), one markdown table per
measurement, each written to --out as it is done and printed:

    python -m benchmarks.gpu_checks --out DIR [--smoke] [--budget-s 480] [--sections attention,compile,...]

- block_swap_1.3b.md, block_swap_14b.md: block swap at K = all, 20, 10, 5 (random weights, fp8_e4m3fn, 480p x 81
  frames): peak VRAM and step time (one DiT forward: rCM's step without CFG), the blocks on the GPU at once as
  counted from the parameters, and the output's largest difference from the unswapped one.
- vs_diffusers.md: the DiT forward against diffusers' WanTransformer3DModel on the same weights, the 1.3B at 480p x
  81 frames in bf16 (benchmarks/vs_diffusers.py): time, peak memory, ratio, and the 4-step time against the compute
  limit (283 TFLOP per forward, 1.43 s per 4-step video at 790 TFLOP/s).
- attention.md: sdpa / flash / sage at the 1.3B's 480p self-attention shape, each backend that imports, and its
  agreement with the explicit math path.
- compile.md: torch.compile per block against eager, the 1.3B at 480p in bf16 (benchmarks/dit_runtime.py).
- preview.md: one live preview's cost as a share of the measured step (benchmarks/preview_cost.py).
- vae_vs_diffusers.md, last and only when the budget leaves time for it: the Wan2.1 VAE decode of 480p x 81 frames
  against diffusers' AutoencoderKLWan in bf16.

A section that fails writes its error in its file and the others go on; a section whose usual time no longer fits
in --budget-s writes that it was skipped. `--smoke` runs every section on tiny configs on the CPU in seconds (the test
of this script).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from alice_core.loading.output import write_text  # noqa: E402
from alice_core.models.attention import ATTENTION_BACKENDS, AttentionBackend, math_kernel  # noqa: E402
from alice_core.models.config import WanDiTConfig, dit_preset  # noqa: E402
from alice_core.models.runtime import DiTRuntime  # noqa: E402
from benchmarks import dit_runtime, preview_cost, vs_diffusers  # noqa: E402

LATENT_480P = (21, 60, 104)  # 81 frames of 832x480


@dataclasses.dataclass(frozen=True)
class SwapCase:
    file: str
    label: str
    cfg: WanDiTConfig
    latent: tuple[int, int, int]
    blocks: str  # K values, "all" = no swap


@dataclasses.dataclass(frozen=True)
class Plan:
    device: str
    swap: tuple[SwapCase, ...]
    swap_precision: str
    repeats: int
    vs_layers: int  # 1.3B-width blocks for the diffusers comparison
    vs_latent: tuple[int, int, int]
    vs_repeats: int
    attention_shape: tuple[int, int, int]  # tokens, heads, head_dim for the timing
    agree_tokens: int  # tokens for the comparison with the math path (its scores are tokens^2 per head)
    compile_cfg: WanDiTConfig
    compile_latent: tuple[int, int, int]
    preview_latent: tuple[int, int, int]
    vae_latent: tuple[int, int, int]
    threads: int
    expected_s: dict[str, float]  # a section's usual time, by file: it starts only if that still fits the budget


def full_plan() -> Plan:
    small, large = dit_preset("wan2.1-t2v-1.3b"), dit_preset("wan2.1-t2v-14b")
    return Plan(
        device="cuda", swap_precision="fp8_e4m3fn", repeats=2,
        swap=(SwapCase("block_swap_1.3b.md", "Wan2.1 T2V 1.3B", small, LATENT_480P, "all,20,10,5"),
              SwapCase("block_swap_14b.md", "Wan2.1 T2V 14B", large, LATENT_480P, "all,20,10,5")),
        vs_layers=30, vs_latent=LATENT_480P, vs_repeats=5,
        attention_shape=(21 * 30 * 52, 12, 128), agree_tokens=4096,
        compile_cfg=small, compile_latent=LATENT_480P, preview_latent=LATENT_480P, vae_latent=LATENT_480P,
        threads=torch.get_num_threads(),
        expected_s={"attention.md": 30, "vs_diffusers.md": 60, "preview.md": 5, "block_swap_1.3b.md": 40,
                    "block_swap_14b.md": 90, "compile.md": 120, "vae_vs_diffusers.md": 150},
    )


def smoke_plan() -> Plan:
    tiny = dit_runtime.TINY
    return Plan(
        device="cpu", swap_precision="fp8_e4m3fn", repeats=1,
        swap=(SwapCase("block_swap_1.3b.md", "tiny (stands in for the 1.3B)", tiny, (2, 8, 8), "all,4,2,1"),
              SwapCase("block_swap_14b.md", "tiny, 8 blocks (stands in for the 14B)",
                       dataclasses.replace(tiny, num_layers=8), (2, 8, 8), "all,5,2")),
        vs_layers=1, vs_latent=(1, 4, 4), vs_repeats=1,
        attention_shape=(256, 2, 64), agree_tokens=128,
        compile_cfg=dataclasses.replace(tiny, num_layers=2), compile_latent=(1, 4, 4), preview_latent=(3, 8, 8),
        vae_latent=(2, 4, 4), threads=1, expected_s={},
    )


def describe(plan: Plan) -> str:
    where = torch.cuda.get_device_name() if plan.device.startswith("cuda") else platform.processor() or "CPU"
    return f"{where}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


@contextlib.contextmanager
def alice_warnings() -> Iterator[list[str]]:
    """The warning lines Alice logs inside the block (an attention fallback, a failed compile)."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("alice_core")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def latent_name(latent: tuple[int, int, int]) -> str:
    size = "480p x 81 frames, " if latent == LATENT_480P else ""
    return f"{size}latent {'x'.join(map(str, latent))} ({latent[0] * (latent[1] // 2) * (latent[2] // 2)} tokens)"


def block_swap(plan: Plan, case: SwapCase) -> str:
    model = dit_runtime.random_dit(case.cfg, plan.swap_precision, plan.device)
    inputs = dit_runtime.random_inputs(case.cfg, plan.swap_precision, case.latent, plan.device)
    with alice_warnings() as said:
        rows = dit_runtime.measure_runs(model, inputs, plan.device, dit_runtime.runtimes(case.blocks), plan.repeats)
    del model, inputs
    head = (f"Block swap, {case.label} ({case.cfg.num_layers} blocks, dim {case.cfg.dim}), random weights in "
            f"{plan.swap_precision}, {latent_name(case.latent)}; forward s = one sampler step (rCM, no CFG), median "
            f"of {plan.repeats} after a warm-up; peak GiB = CUDA's max allocated over those forwards, weights "
            "included")
    notes = "".join(f"\n\nAlice said: {line}" for line in said)
    return f"{head}\n\n{dit_runtime.format_rows(rows)}{notes}"


def versus_diffusers(plan: Plan, measured: dict, part: str = "dit") -> str:
    """benchmarks/vs_diffusers.py's table of one part (dit, vae) at this plan's size, in bf16."""
    latent, repeats = (plan.vs_latent, plan.vs_repeats) if part == "dit" else (plan.vae_latent, 2)
    args = argparse.Namespace(part=part, device=plan.device, dtype="bf16", layers=plan.vs_layers, latent=latent,
                              repeats=repeats, threads=plan.threads, clock="wall", worker=None)
    result = vs_diffusers.measure(part, args)
    if part == "dit":
        measured["step_s"] = min(result["times"]["alice"])
    return vs_diffusers.table(part, args, result)


def attention(plan: Plan) -> str:
    tokens, heads, head_dim = plan.attention_shape
    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(0)

    def qkv(n: int) -> list[torch.Tensor]:
        return [torch.randn(1, n, heads, head_dim, generator=g).to(plan.device, dtype) for _ in range(3)]

    small, full = qkv(plan.agree_tokens), qkv(tokens)
    reference = math_kernel(*(t.float() for t in small)).flatten(2)
    tflop = 4 * tokens * tokens * heads * head_dim / 1e12
    shape = " (the 1.3B's 480p self-attention)" if plan.attention_shape == (21 * 30 * 52, 12, 128) else ""
    lines = [f"Attention kernels, {tokens} tokens x {heads} heads x {head_dim}{shape}, "
             f"{dtype}; time: median of 5 calls after a warm-up; agreement: against the float32 math path at "
             f"{plan.agree_tokens} tokens", "",
             "| backend | runs as | s per call | TFLOP/s | max abs diff vs math path |", "|---|---|---|---|---|"]
    for name in ATTENTION_BACKENDS:
        with alice_warnings() as said:
            backend = AttentionBackend(name)
            if backend.name != name:
                lines.append(f"| {name} | not importable: {said[0] if said else ''} | | | |")
                continue
            diff = (backend(*small).float() - reference).abs().max().item()
            seconds = median_time(lambda: backend(*full), plan.device, 5)
        runs_as = backend.name if backend.name == name else f"{backend.name} (fell back: {said[-1]})"
        lines.append(f"| {name} | {runs_as} | {seconds:.5f} | {tflop / seconds:.1f} | {diff:.3g} |")
    return "\n".join(lines)


def median_time(run: Callable[[], object], device: str, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        dit_runtime.sync(device)
        start = time.perf_counter()
        run()
        dit_runtime.sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compile_blocks(plan: Plan) -> str:
    cfg = plan.compile_cfg
    model = dit_runtime.random_dit(cfg, "bf16", plan.device)
    inputs = dit_runtime.random_inputs(cfg, "bf16", plan.compile_latent, plan.device)
    runs = [("eager", DiTRuntime()), ("torch.compile per block", DiTRuntime(compile=True))]
    with alice_warnings() as said:
        rows = dit_runtime.measure_runs(model, inputs, plan.device, runs, plan.repeats + 1)
    note = f"\n\nCompile fell back to eager: {said[0]}" if said else ""
    return (f"torch.compile per block vs eager, {cfg.num_layers} blocks x dim {cfg.dim}, random bf16 weights, "
            f"{latent_name(plan.compile_latent)}; the first call of the compiled run is the compile\n\n"
            f"{dit_runtime.format_rows(rows)}{note}")


def preview(plan: Plan, measured: dict) -> str:
    if "step_s" in measured:
        step = f"the measured step (alice's fastest DiT forward in vs_diffusers.md, {latent_name(plan.vs_latent)})"
        return preview_cost.table(plan.device, 20, measured["step_s"], step, plan.preview_latent)
    return preview_cost.table(plan.device, 20, latent=plan.preview_latent)


def sections(plan: Plan) -> list[tuple[str, Callable[[dict], str]]]:
    """(file, section) in the order they run; a section gets the measurements dict the earlier ones filled. The
    third-party attention kernels run after the main measurements: a kernel's bad memory access would leave the
    CUDA context unusable for every later section."""
    return [
        ("vs_diffusers.md", lambda m: versus_diffusers(plan, m)),
        ("preview.md", lambda m: preview(plan, m)),
        *[(case.file, lambda m, case=case: block_swap(plan, case)) for case in plan.swap],
        ("attention.md", lambda m: attention(plan)),
        ("compile.md", lambda m: compile_blocks(plan)),
        ("vae_vs_diffusers.md", lambda m: versus_diffusers(plan, m, "vae")),
    ]


SECTION_NAMES = tuple(file.removesuffix(".md") for file, _ in sections(smoke_plan()))


def run_all(plan: Plan, out: Path, budget_s: float, only: set[str] | None = None) -> dict[str, str]:
    """Run every section (or those whose file stem is in `only`), write each one's markdown to out/FILE as it
    ends; returns {file: markdown}."""
    out.mkdir(parents=True, exist_ok=True)
    start, measured, written = time.monotonic(), {}, {}
    for file, section in sections(plan):
        if only is not None and file.removesuffix(".md") not in only:
            continue
        began, expected = time.monotonic(), plan.expected_s.get(file, 0.0)
        if began - start + expected > budget_s:
            text = (f"Skipped: {max(budget_s - (began - start), 0):.0f} s of the {budget_s:.0f} s budget were left, "
                    f"and this section usually takes {expected:.0f} s.")
        else:
            try:
                text = section(measured)
            except Exception as e:  # one failing measurement must not cost the others
                traceback.print_exc()
                text = f"Failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if plan.device.startswith("cuda"):
                torch.cuda.empty_cache()
        text += f"\n\n{describe(plan)}; this section took {time.monotonic() - began:.1f} s\n"
        write_text(out / file, text, replace=True)
        print(f"## {file}\n\n{text}", flush=True)
        written[file] = text
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the markdown tables")
    p.add_argument("--smoke", action="store_true", help="tiny configs on the CPU (seconds): the script's own test")
    p.add_argument("--budget-s", type=float, default=480.0, help="no section starts after this many seconds")
    p.add_argument("--sections", help=f"comma list of the sections to run (default all: {', '.join(SECTION_NAMES)})")
    args = p.parse_args(argv)
    only = set(args.sections.split(",")) if args.sections else None
    if only and only - set(SECTION_NAMES):
        p.error(f"--sections: unknown {', '.join(sorted(only - set(SECTION_NAMES)))}; choose from {', '.join(SECTION_NAMES)}")
    plan = smoke_plan() if args.smoke else full_plan()
    if plan.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: run on a GPU machine, or pass --smoke for the CPU run")
    torch.set_num_threads(plan.threads)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    run_all(plan, args.out, args.budget_s, only)


if __name__ == "__main__":
    main()
