"""benchmarks/seed_spread.py: the Wilson interval, the travel measure, and a run on a tiny random bundle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from alice_core.world.render import BackgroundSpec, ClipSpec, ObjectSpec, object_positions, render_clip
from benchmarks import seed_spread
from tests.bundles import random_tiny_bundle


@pytest.mark.parametrize("passed,total", [(0, 32), (5, 32), (16, 32), (32, 32), (3, 7)])
def test_wilson_interval_matches_scipy(passed, total):
    want = stats.binomtest(passed, total).proportion_ci(method="wilson")
    assert seed_spread.wilson_interval(passed, total) == pytest.approx((want.low, want.high), abs=1e-9)


def test_travel_is_the_rendered_displacement_along_the_direction():
    square = ObjectSpec("square", "yellow", radius=4.0, start=(6.0, 14.0), velocity=(1.5, 0.25), motion="right")
    clip = render_clip(ClipSpec((square,), BackgroundSpec("charcoal"), size=32, frames=9))
    truth = object_positions(square, 9)
    assert seed_spread.travel_px(clip, "right") == pytest.approx(truth[-1, 0] - truth[0, 0], abs=0.3)
    assert seed_spread.travel_px(clip, "left") == pytest.approx(truth[0, 0] - truth[-1, 0], abs=0.3)


def test_report_has_a_row_per_ablation_row_and_bad_prompts_name_the_flag(tmp_path, capsys):
    bundle = random_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "spread.md"
    code = seed_spread.main(["--teacher", str(bundle.folder), "--student", f"rcm={bundle.dits['rcm']}",
                             "--rows", "teacher4,rcm1", "--seeds", "3", "--threads", "1", "--out", str(out),
                             "--cache", str(tmp_path / "cache")])
    assert code == 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| teacher 4 steps + CFG", "| rCM 1 step"]
    assert seed_spread.main(["--teacher", str(bundle.folder), "--prompt", "a red ball bouncing"]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert not np.isnan(seed_spread.rendered_travel(seed_spread.DEFAULT_PROMPT, 32, 9, 4))
