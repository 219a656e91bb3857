"""The teacher stage: resumable from its checkpoint (bit-exact) and from a committed resume pack; exports load."""

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.loading.dit import load_dit
from alice_core.models.config import WanDiTConfig
from alice_core.train.state import load_checkpoint, read_resume_pack, write_run_resume_pack
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.train.teacher import TeacherTrainConfig, export_dit, train_teacher, write_tiny_bundle

SMALL = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=48, out_dim=48, text_dim=384, text_len=32)


def config(steps):
    return TeacherTrainConfig(steps=steps, batch_size=2, size=32, frames=9, checkpoint_every=1, warmup_steps=2,
                              dit=SMALL.to_dict())


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    straight = load_checkpoint(train_teacher(config(4), tmp_path / "a", threads=1))
    train_teacher(config(2), tmp_path / "b", threads=1)  # "killed" after 2 steps: only its checkpoint survives
    resumed = load_checkpoint(train_teacher(config(4), tmp_path / "b", threads=1))
    assert straight["step"] == resumed["step"] == 4
    for k in straight["model"]:
        assert torch.equal(straight["model"][k], resumed["model"][k]), k
        assert torch.equal(straight["ema"][k], resumed["ema"][k]), k
    losses = (tmp_path / "b" / "loss.csv").read_text().split()
    assert [int(line.split(",")[0]) for line in losses] == [1, 2, 3, 4]
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_resume_pack_and_export(tmp_path):
    run = tmp_path / "run"
    train_teacher(config(2), run, threads=1)
    pack = write_run_resume_pack(run, tmp_path / "pack")
    assert pack.stat().st_size < 2 * 4 * sum(v.numel() for v in load_checkpoint(run / "checkpoint.pt")["model"].values())
    state = read_resume_pack(tmp_path / "pack")
    assert state["step"] == 2 and "optimizer" not in state
    # A fresh run folder continues from the pack.
    out = load_checkpoint(train_teacher(config(3), tmp_path / "continued", threads=1, resume_pack=tmp_path / "pack"))
    assert out["step"] == 3
    exported = export_dit(run / "checkpoint.pt", tmp_path / "teacher.safetensors")
    model = load_dit(exported)
    assert model.config == SMALL
    ema = load_checkpoint(run / "checkpoint.pt")["ema"]
    assert torch.allclose(model.state_dict()["head.head.weight"], ema["head.head.weight"], atol=1e-3)


def test_temporal_stride_option_trains_and_bundles(tmp_path):
    two = WanDiTConfig(**{**SMALL.to_dict(), "in_dim": 24, "out_dim": 24})  # 3 colours x 2 frames x 2x2 pixels
    cfg = TeacherTrainConfig(steps=1, batch_size=2, size=32, frames=9, temporal_stride=2, dit=two.to_dict())
    run = tmp_path / "run"
    train_teacher(cfg, run, threads=1)
    bundle = write_tiny_bundle(tmp_path / "bundle", run)
    pipe = load_pipeline(str(bundle.parent))
    assert pipe.autoencoder.temporal_stride == 2
    video = pipe.generate(GenerationSettings("a red ball", sampler="teacher", steps=2))
    assert video.frames.shape == (9, 32, 32, 3)
    # A DiT that does not fit the strides is refused with the numbers.
    with pytest.raises(AliceError, match="DiT takes 48 latent channels but strides 2x2x2 give 24"):
        train_teacher(TeacherTrainConfig(steps=1, temporal_stride=2, dit=SMALL.to_dict()), tmp_path / "bad", threads=1)
