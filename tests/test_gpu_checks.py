"""benchmarks/gpu_checks.py, the one command for the GPU measurements, run end to end on the CPU with --smoke: each
section writes its table, and the tables hold what was measured (block swap's outputs equal the unswapped one with
at most K blocks on the device, counted from the parameters; attention agrees with the math path; alice agrees with
diffusers), so a GPU session's one run of it does not fail on a typo after minutes of setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alice_core.models.attention import available_attention_backends
from benchmarks import gpu_checks

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(out: Path, sections: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.gpu_checks", "--smoke", "--out", str(out), "--sections", sections]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `text`, keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def test_the_smoke_run_writes_every_table_with_what_it_measured(tmp_path):
    sections = "attention,vs_diffusers,preview,block_swap_1.3b,block_swap_14b"
    stdout = run_smoke(tmp_path, sections)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {f"{s}.md" for s in sections.split(",")}
    texts = {name: (tmp_path / name).read_text() for name in files}
    assert all(f"## {name}" in stdout and text in stdout for name, text in texts.items())  # printed as written
    assert not any("Failed:" in t or "Skipped:" in t for t in texts.values())

    for name, blocks, ks in (("block_swap_1.3b.md", 6, ["all", "4", "2", "1"]), ("block_swap_14b.md", 8, ["all", "5", "2"])):
        rows = table(texts[name])
        assert [r["run"] for r in rows] == [f"K={k}" for k in ks]
        for k, row in zip(ks, rows):
            assert float(row["max abs diff vs first run"]) == 0.0  # swapped output == unswapped output
            counted = int(row["blocks on device at once (counted)"])
            assert counted == (blocks if k == "all" else int(k))  # never above K, and the window is used
            assert float(row["forward s"]) > 0

    attention = {r["backend"]: r for r in table(texts["attention.md"])}
    assert set(attention) == {"sdpa", "flash", "sage"}
    for name, row in attention.items():
        if name in available_attention_backends():
            assert row["runs as"] == name and float(row["max abs diff vs math path"]) < 1e-2  # bf16 vs float32
        else:
            assert row["runs as"].startswith("not importable")

    versus = texts["vs_diffusers.md"]
    ratio = table(versus)[2]
    assert ratio[""] == "alice / diffusers" and float(ratio["median wall s"].split()[0]) > 0
    assert float(versus.split("Largest |alice - diffusers| of the outputs: ")[1].split()[0]) < 0.05  # bf16, 1 block
    assert "4 steps" in versus and "the limit" in versus

    (preview,) = table(texts["preview.md"])
    share = next(v for k, v in preview.items() if k.startswith("share of the measured step"))
    assert share.endswith(" s") and float(share.split("%")[0]) > 0  # against the step vs_diffusers measured


@pytest.mark.slow  # inductor compiles one block on the CPU, and the full-width VAE decodes (tens of seconds)
def test_the_compile_and_vae_sections_measure_the_same_outputs(tmp_path):
    run_smoke(tmp_path, "compile,vae_vs_diffusers")
    text = (tmp_path / "compile.md").read_text()
    eager, compiled = table(text)
    assert (eager["run"], compiled["run"]) == ("eager", "torch.compile per block")
    assert "fell back to eager" not in text
    assert float(compiled["max abs diff vs first run"]) < 0.05  # bf16: inductor fuses differently

    vae = (tmp_path / "vae_vs_diffusers.md").read_text()
    assert vae.startswith("VAE decode (Wan2.1, full width), latent 2x4x4, bf16")
    assert table(vae)[2][""] == "alice / diffusers"
    # the same decode: diffusers given the de-normalised latent Alice's decode makes (nearly every pixel unclamped)
    assert float(vae.split("Largest |alice - diffusers| of the outputs: ")[1].split()[0]) < 0.05


def test_bad_sections_and_a_missing_gpu_name_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_checks.main(["--out", str(tmp_path), "--smoke", "--sections", "attention,swap"])
    assert "--sections: unknown swap; choose from vs_diffusers, preview, block_swap_1.3b" in capsys.readouterr().err
    if not gpu_checks.torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_checks.main(["--out", str(tmp_path)])
        assert "no CUDA device here" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
