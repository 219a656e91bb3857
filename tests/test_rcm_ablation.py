"""benchmarks/rcm_ablation.py end to end on tiny random bundles: per-row cache, report from the cache alone, plot."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from alice_core.train.distill import DistillConfig, distill
from benchmarks import rcm_ablation as ablation
from alice_core.world.frame_quality import frame_quality
from tests.bundles import random_tiny_bundle

ROW_LABELS = {
    "teacher50": "teacher 50 steps + CFG", "teacher4": "teacher 4 steps + CFG", "scm4": "sCM-only 4 steps",
    "dmd4": "DMD-only 4 steps", "cfg4": "guidance-distilled only 4 steps", "rcm1": "rCM 1 step", "rcm2": "rCM 2 steps", "rcm4": "rCM 4 steps",
}
COMMON = ["--limit", "2", "--seeds", "0,1"]




def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ablation")
    bundle = random_tiny_bundle(tmp / "bundle")
    rcm_run = tmp / "rcm-run"
    distill(bundle.folder, DistillConfig(mode="rcm", steps=1, batch_size=1, checkpoint_every=1000), rcm_run)
    cfg_run = tmp / "cfg-run"
    distill(bundle.folder, DistillConfig(mode="cfg", steps=1, batch_size=1, checkpoint_every=1000), cfg_run)
    paths = {"bundle": bundle.folder, "rcm_run": rcm_run, "cfg_run": cfg_run, "scm_file": bundle.dits["rcm"],
             "dmd_file": bundle.dits["teacher"], "cache": tmp / "cache", "out": tmp / "docs" / "ablation.md",
             "plot": tmp / "docs" / "ablation.png"}
    outputs = ["--cache", str(paths["cache"]), "--out", str(paths["out"]), "--plot", str(paths["plot"]), *COMMON]
    # Two processes' worth of rows, as the lead runs them: the slow teacher row alone, the rest together.
    assert ablation.main(["--teacher", str(bundle.folder), "--rows", "teacher50", *outputs]) == 0
    assert ablation.main(["--teacher", str(bundle.folder), "--student", f"rcm={rcm_run}",
                          "--student", f"scm={paths['scm_file']}", "--student", f"dmd={paths['dmd_file']}",
                          "--student", f"cfg={cfg_run}", "--rows", "teacher4,scm4,dmd4,cfg4,rcm1,rcm2,rcm4", *outputs]) == 0
    # The report again from the cache alone, nothing computed.
    paths["out"].unlink()
    paths["plot"].unlink()
    assert ablation.main(outputs) == 0
    return paths


def _cached(setup: dict) -> dict[str, dict]:
    return {key: json.loads((setup["cache"] / f"{key}.json").read_text()) for key in ROW_LABELS}


def _table(markdown: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The results table (the first one in the file) as header and {run: {column: cell}}."""
    lines = [line for line in markdown.split("## Results", 1)[1].split("## Networks", 1)[0].splitlines()
             if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return header, rows


def test_every_row_is_cached_with_its_scores_timings_and_identity(setup: dict) -> None:
    cached = _cached(setup)
    passes = {"teacher50": 100, "teacher4": 8, "scm4": 4, "dmd4": 4, "cfg4": 4, "rcm1": 1, "rcm2": 2, "rcm4": 4}
    for key, data in cached.items():
        assert data["label"] == ROW_LABELS[key]
        assert data["seeds"] == [0, 1] and len(data["prompts"]) == 2 and data["clips"] == 4
        assert data["passes_per_video"] == passes[key]
        assert len(data["seconds_per_clip"]) == 4 and data["seconds_per_video"] == pytest.approx(np.mean(data["seconds_per_clip"]))
        assert 0 < data["sampling_seconds_per_video"] < data["seconds_per_video"]
        assert data["teacher_bundle"]["teacher_sha256"] == _sha16(setup["bundle"] / "dit_teacher.safetensors")
        # per-seed accuracies agree with the per-clip pass/fail they summarise
        for attribute in ("colour", "shape", "persistence"):
            expected = [np.mean([clip[attribute] for clip in per_seed if clip[attribute] is not None])
                        for per_seed in data["scores"]]
            assert data["accuracy_per_seed"][attribute] == pytest.approx(expected)
    assert cached["teacher50"]["guidance"] == 3.0 and cached["rcm4"]["guidance"] is None
    assert cached["scm4"]["dit"]["sha256"] == _sha16(setup["scm_file"])
    assert cached["dmd4"]["dit"]["sha256"] == _sha16(setup["dmd_file"])
    # the rCM run folder was exported (EMA weights) into the cache, and all rCM rows used that one file
    exported = {Path(cached[k]["dit"]["file"]) for k in ("rcm1", "rcm2", "rcm4")}
    assert len(exported) == 1 and exported.pop().parent == setup["cache"] / "students"
    assert cached["rcm4"]["dit"]["source"] == str(setup["rcm_run"]) and cached["rcm4"]["dit"]["train_step"] == 1
    assert cached["rcm4"]["dit"]["sha256"] != cached["scm4"]["dit"]["sha256"]
    assert cached["cfg4"]["dit"]["source"] == str(setup["cfg_run"]) and cached["cfg4"]["guidance"] is None
    assert cached["cfg4"]["dit"]["sha256"] not in {cached[k]["dit"]["sha256"] for k in ("rcm4", "scm4", "dmd4")}


def test_report_from_cache_has_every_row_and_the_cached_numbers(setup: dict) -> None:
    markdown = setup["out"].read_text()
    header, rows = _table(markdown)
    assert header[:2] == ["run", "clips"]
    assert {"colour", "shape", "direction", "persistence", "FD", "passes/video", "s/video",
            "speed-up vs teacher 50"} <= set(header)
    assert list(rows) == list(ROW_LABELS.values())
    cached = _cached(setup)
    base_seconds = cached["teacher50"]["seconds_per_video"]
    for key, data in cached.items():
        row = rows[ROW_LABELS[key]]
        for attribute in ("colour", "shape", "persistence", "all"):
            rates = np.array(data["accuracy_per_seed"][attribute], dtype=float)
            half = stats.t.ppf(0.975, len(rates) - 1) * rates.std(ddof=1) / math.sqrt(len(rates))
            mean_cell, half_cell = (float(v) for v in row[attribute].split(" ± "))
            # 0.05 display rounding, plus SynthBench's t table holding 12.706 where scipy gives 12.7062
            assert mean_cell == pytest.approx(100 * rates.mean(), abs=0.051)
            assert half_cell == pytest.approx(100 * half, abs=0.051 + 2e-5 * 100 * half)
        assert row["clips"] == "4" and row["passes/video"] == str(data["passes_per_video"])
        assert row["FD"] == f"{data['frechet_distance']:.3f}"
        assert row["s/video"] == f"{data['seconds_per_video']:.3f}"
        assert row["speed-up vs teacher 50"] == f"{base_seconds / data['seconds_per_video']:.1f}×"
    assert "first 2 SynthBench held-out prompts × seeds 0, 1 = 4 clips" in markdown
    assert "Missing rows" not in markdown and "![accuracy and time per video](ablation.png)" in markdown


def test_frame_quality_is_cached_per_clip_and_reported(setup: dict) -> None:
    """Each cached clip's background RMS / fragments equal frame_quality of the same clip generated afresh, and
    the report's columns are their means."""
    cached = _cached(setup)
    _, rows = _table(setup["out"].read_text())
    pipe = ablation.load_pipeline(setup["bundle"])
    data = cached["teacher4"]
    prompt, seed = data["prompts"][1], data["seeds"][1]
    clip = pipe.generate(ablation.GenerationSettings(prompt, seed=seed, sampler="teacher", steps=4)).frames
    fresh = frame_quality(clip)
    assert data["quality"][1][1] == pytest.approx([fresh.background_rms, fresh.fragments_per_frame], rel=1e-6)
    for key, data in cached.items():
        quality = np.array(data["quality"], dtype=float)
        assert quality.shape == (2, 2, 2)  # seeds x prompts x (bg RMS, fragments)
        row = rows[ROW_LABELS[key]]
        assert row["bg RMS"] == f"{quality[..., 0].mean():.2f}"
        assert row["fragments"] == f"{quality[..., 1].mean():.2f}"


def test_verdict_is_computed_from_the_cached_numbers(setup: dict) -> None:
    verdict = setup["out"].read_text().split("## Verdict vs target", 1)[1]
    cached = _cached(setup)
    speedup = cached["teacher50"]["sampling_seconds_per_video"] / cached["rcm4"]["sampling_seconds_per_video"]
    assert f"= {speedup:.1f}× faster" in verdict
    assert "network passes 100 vs 4 = 25.0×" in verdict
    assert f"Speed target {'met' if speedup >= 20 else 'not met'}**" in verdict
    assert ("Score target met" in verdict) != ("Score target not met" in verdict)


def test_plot_is_a_valid_png(setup: dict) -> None:
    with Image.open(setup["plot"]) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 400
    assert not list(setup["plot"].parent.glob("*.tmp"))


def test_stale_or_missing_rows_are_reported_not_mixed_in(setup: dict, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"], cache)
    (cache / "dmd4.json").unlink()
    out = tmp_path / "report.md"
    assert ablation.main(["--cache", str(cache), "--out", str(out), "--plot", "none", *COMMON]) == 0
    _, rows = _table(out.read_text())
    assert "DMD-only 4 steps" not in rows and len(rows) == 7
    assert "DMD-only 4 steps: not measured" in out.read_text()
    # other seeds than the cached ones: nothing to report
    assert ablation.main(["--cache", str(cache), "--out", str(tmp_path / "x.md"), "--plot", "none", "--limit", "2",
                          "--seeds", "0"]) == 2
    assert "no rows cached" in capsys.readouterr().err and not (tmp_path / "x.md").exists()


@pytest.mark.parametrize("student, message", [
    ("rcm", "bad --student 'rcm'; write MODE=RUN_DIR_OR_DIT_FILE"),
    ("fast=runs/x", "bad --student 'fast=runs/x'"),
    ("rcm=/no/such/run", "/no/such/run does not exist"),
])
def test_bad_student_spec_exits_2_with_the_fix(student: str, message: str, tmp_path: Path, capsys) -> None:
    code = ablation.main(["--student", student, "--rows", "rcm4", "--cache", str(tmp_path), *COMMON])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("rcm_ablation: error: ") and message in err


def test_student_run_of_another_mode_and_missing_students_are_refused(setup: dict, tmp_path: Path, capsys) -> None:
    args = ["--teacher", str(setup["bundle"]), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "r.md"), *COMMON]
    assert ablation.main([*args, "--student", f"scm={setup['rcm_run']}", "--rows", "scm4"]) == 2
    assert "distilled with mode 'rcm'; pass it as --student rcm=" in capsys.readouterr().err
    assert ablation.main([*args, "--rows", "dmd4,rcm4"]) == 2
    assert "rows dmd4, rcm4 need --student dmd=RUN_DIR_OR_DIT_FILE --student rcm=RUN_DIR_OR_DIT_FILE" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_only_a_clearly_lower_score_fails_the_target():
    assert ablation.compare((0.40, 0.05), (0.30, 0.05)) == "reaches it"
    assert ablation.compare((0.25, 0.10), (0.30, 0.05)).startswith("below its mean, within")
    assert ablation.compare((0.10, 0.02), (0.30, 0.05)) == ablation.CLEARLY_BELOW
