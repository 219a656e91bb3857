"""`alice bench`: SynthBench on held-out prompts for several sampler settings of one model, with wall times."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import AliceError
from .pipeline import GenerationSettings, VideoPipeline
from .world import SynthBenchResult, format_table, run_synthbench


@dataclass(frozen=True)
class BenchRun:
    """One row: a sampler with a step count (and teacher guidance)."""

    sampler: str
    steps: int
    guidance: float | None = None

    @property
    def name(self) -> str:
        g = "" if self.guidance is None else f" cfg {self.guidance:g}"
        return f"{self.sampler} {self.steps} steps{g}"

    @classmethod
    def parse(cls, text: str) -> "BenchRun":
        """'rcm:4', 'teacher:50' or 'teacher:50:3.0' (sampler:steps[:guidance])."""
        parts = text.split(":")
        try:
            sampler, steps = parts[0], int(parts[1])
            guidance = float(parts[2]) if len(parts) > 2 else None
        except (IndexError, ValueError):
            raise AliceError(f"bad run {text!r}; write sampler:steps[:guidance], e.g. rcm:4 or teacher:50:3") from None
        return cls(sampler, steps, guidance)


def bench_pipeline(
    pipe: VideoPipeline, runs: list[BenchRun], prompts: list[str], seeds: list[int]
) -> dict[str, tuple[SynthBenchResult, float]]:
    """SynthBench result and mean seconds per video (sampling + decoding) for each run."""
    results = {}
    for run in runs:
        times: list[float] = []

        def generate(prompt: str, seed: int) -> np.ndarray:
            start = time.perf_counter()
            video = pipe.generate(GenerationSettings(prompt, seed=seed, sampler=run.sampler, steps=run.steps, guidance=run.guidance))
            times.append(time.perf_counter() - start)
            return video.frames

        results[run.name] = (run_synthbench(generate, prompts, seeds), float(np.mean(times)))
    return results


def format_bench_table(results: dict[str, tuple[SynthBenchResult, float]]) -> str:
    """SynthBench's markdown table with a column of wall time per video."""
    table = format_table({name: r for name, (r, _) in results.items()}).splitlines()
    lines = [table[0] + " s/video |", table[1] + "---|"]
    for line, (_, seconds) in zip(table[2:], results.values()):
        lines.append(f"{line} {seconds:.2f} |")
    return "\n".join(lines)
