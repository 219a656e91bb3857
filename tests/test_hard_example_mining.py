"""Hard-example mining in distillation: focused clip sampling, the miner's log and focus, exact resume."""

import csv
import json

import numpy as np
import torch

from alice_core.train.distill import DistillConfig, distill
from alice_core.train.probe import probe_prompts
from alice_core.train.state import load_checkpoint
from alice_core.world import make_training_batch, parse_prompt
from alice_core.world.captions import PromptAttributes, is_heldout
from alice_core.world.synthbench import score_clip
from tests.bundles import random_tiny_bundle


def test_focused_clips_show_the_focus_attributes_under_training_wordings():
    focus = (PromptAttributes("green", "triangle", "left"), PromptAttributes("white", "square", "bounce"))
    clips, captions = make_training_batch(np.random.default_rng(0), 12, size=32, frames=9, focus=focus,
                                          focus_fraction=1.0)
    for clip, text in zip(clips, captions):
        wanted = parse_prompt(text)
        assert wanted in focus and not is_heldout(text)
        score = score_clip(clip, wanted)  # the independent detector reads the attributes back from the pixels
        assert score.colour and score.shape and (score.direction or score.bounce)
    # No focus (before the first mining): the random stream and the batch are the plain ones.
    plain = make_training_batch(np.random.default_rng(1), 4, size=32, frames=9)
    same = make_training_batch(np.random.default_rng(1), 4, size=32, frames=9, focus=(), focus_fraction=1.0)
    assert np.array_equal(plain[0], same[0]) and plain[1] == same[1]


def test_mining_logs_scores_sets_the_focus_and_resumes_exactly(tmp_path):
    bundle = random_tiny_bundle(tmp_path / "bundle")
    cfg = lambda steps: DistillConfig(mode="rcm", steps=steps, batch_size=1, tangent_warmup=1, student_update_freq=2,
                                      max_simulation_steps=2, checkpoint_every=1, mining_every=2)
    straight = load_checkpoint(distill(bundle.folder, cfg(4), tmp_path / "a", threads=1))
    with (tmp_path / "a" / "mining.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    # A random student fails every probe prompt, so the focus is every probe prompt's attributes.
    assert all(int(r["failed"]) == int(r["prompts"]) == 20 and float(r["all"]) == 0.0 for r in rows)
    focus = [PromptAttributes(*a) for a in json.loads(straight["focus"])]
    assert focus == [parse_prompt(p) for p in probe_prompts(20)]
    distill(bundle.folder, cfg(3), tmp_path / "b", threads=1)
    resumed = load_checkpoint(distill(bundle.folder, cfg(4), tmp_path / "b", threads=1))
    for k in straight["student"]:
        assert torch.equal(straight["student"][k], resumed["student"][k]), k
