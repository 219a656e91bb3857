"""The teacher stage: resumable from its checkpoint (bit-exact) and from a committed resume pack; exports load."""

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.loading.dit import load_dit
from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT
from alice_core.train.state import load_checkpoint, read_resume_pack, write_run_resume_pack
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.train.teacher import TeacherTrainConfig, export_dit, train_teacher, write_tiny_bundle
from alice_core.train.warm_start import regroup_temporal_stride

SMALL = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=48, out_dim=48, text_dim=384, text_len=32)


def config(steps):
    return TeacherTrainConfig(steps=steps, batch_size=2, size=32, frames=9, checkpoint_every=1, warmup_steps=2,
                              dit=SMALL.to_dict(), eval_every=0)


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
    cfg = TeacherTrainConfig(steps=1, batch_size=2, size=32, frames=9, temporal_stride=2, dit=two.to_dict(), eval_every=0)
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


def _randomised(model: WanDiT, seed: int) -> WanDiT:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def test_regrouped_teacher_on_a_latent_equals_the_source_on_the_same_frames_repeated():
    source = _randomised(WanDiT(SMALL), seed=1)
    weights, two = regroup_temporal_stride(source.state_dict(), SMALL, spatial_stride=2, from_stride=4, to_stride=2)
    assert (two.in_dim, two.out_dim) == (24, 24)
    target = WanDiT(two).eval()
    target.load_state_dict(weights)

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 24, 3, 8, 8, generator=gen)
    # The same latent in the source's layout: each frame slot (colour, frame, row, col) repeated twice.
    repeated = x.reshape(2, 3, 2, 2, 2, 3, 8, 8).repeat_interleave(2, dim=2).reshape(2, 48, 3, 8, 8)
    t, ctx = torch.tensor([300.0, 700.0]), torch.randn(2, 5, 384, generator=gen)
    with torch.no_grad():
        got = target(x, t, ctx)
        want = source(repeated, t, ctx).reshape(2, 3, 2, 2, 2, 2, 3, 8, 8).mean(dim=3).reshape(2, 24, 3, 8, 8)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, source(repeated, t, ctx)[:, :24], atol=1e-3)  # the regrouping is not a slice

    with pytest.raises(AliceError, match="must divide the source model's stride 4"):
        regroup_temporal_stride(source.state_dict(), SMALL, 2, from_stride=4, to_stride=3)
    with pytest.raises(AliceError, match="takes 48 latent channels, not the 24"):
        regroup_temporal_stride(source.state_dict(), SMALL, 2, from_stride=2, to_stride=1)


def test_a_new_run_starts_from_a_larger_stride_teachers_pack(tmp_path):
    train_teacher(config(2), tmp_path / "four", threads=1)
    write_run_resume_pack(tmp_path / "four", tmp_path / "pack")
    source = read_resume_pack(tmp_path / "pack")
    two = WanDiTConfig(**{**SMALL.to_dict(), "in_dim": 24, "out_dim": 24})
    cfg = TeacherTrainConfig(steps=0, batch_size=2, size=32, frames=9, temporal_stride=2, dit=two.to_dict(),
                             eval_every=0)
    state = load_checkpoint(train_teacher(cfg, tmp_path / "two", threads=1, init_from=tmp_path / "pack"))
    want, _ = regroup_temporal_stride(source["model"], SMALL, 2, 4, 2)
    assert all(torch.equal(state["model"][k], want[k]) for k in want)
    assert state["latent_norm"] == source["latent_norm"] and state["config"]["init_from"] == str(tmp_path / "pack")

    bigger = TeacherTrainConfig(**{**cfg.__dict__, "size": 64})
    with pytest.raises(AliceError, match="start this run with --size 32 --frames 9"):
        train_teacher(bigger, tmp_path / "big", threads=1, init_from=tmp_path / "pack")
