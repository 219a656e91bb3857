"""The teacher's object loss weight (--object-loss-weight) and recipe changes on a resumed run."""

import numpy as np
import pytest
import torch

from alice_core.cli import build_parser
from alice_core.errors import AliceError
from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT
from alice_core.train.data import object_mask
from alice_core.train.flow_matching import flow_matching_loss, object_weights
from alice_core.train.state import load_checkpoint
from alice_core.train.teacher import TeacherTrainConfig, train_teacher
from alice_core.world.render import BackgroundSpec, ClipSpec, ObjectSpec, render_clip

SMALL24 = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=24, out_dim=24, text_dim=384, text_len=32)


def _moving_square_clip() -> np.ndarray:
    square = ObjectSpec("square", "red", radius=4.0, start=(8.0, 12.0), velocity=(2.0, 0.0), motion="right")
    return render_clip(ClipSpec((square,), BackgroundSpec("charcoal"), size=32, frames=9))


def test_object_mask_marks_exactly_the_latent_blocks_that_hold_object_pixels():
    clip = _moving_square_clip()
    empty = render_clip(ClipSpec((), BackgroundSpec("charcoal"), size=32, frames=9))
    object_pixels = np.abs(clip.astype(int) - empty.astype(int)).max(axis=-1) > 60  # [F, H, W]
    # Latent frame 0 is frame 0; latent frame k >= 1 packs frames 2k-1 and 2k (temporal stride 2).
    groups = [[0]] + [[2 * k - 1, 2 * k] for k in range(1, 5)]
    want = np.zeros((5, 16, 16))
    for k, frames in enumerate(groups):
        for y in range(16):
            for x in range(16):
                want[k, y, x] = object_pixels[frames, 2 * y:2 * y + 2, 2 * x:2 * x + 2].any()
    mask = object_mask(clip[None], spatial_stride=2, temporal_stride=2)
    assert mask.shape == (1, 1, 5, 16, 16)
    assert np.array_equal(mask[0, 0].numpy(), want) and 0 < want.mean() < 0.2


def test_element_weights_give_the_weighted_mean_of_squared_velocity_errors():
    model = WanDiT(SMALL24).eval()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 24, 2, 4, 4, generator=gen), torch.randn(2, 24, 2, 4, 4, generator=gen)
    ctx, s = torch.randn(2, 5, 384, generator=gen), torch.tensor([0.3, 0.8])
    mask = (torch.rand(2, 1, 2, 4, 4, generator=gen) < 0.3).float()
    element = object_weights(mask, 4.0)
    assert set(element.unique().tolist()) <= {1.0, 5.0}
    with torch.no_grad():
        v = model((1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise, s * 1000, ctx)
        error = (v - (noise - x0)) ** 2
        per_sample = [(element[i].expand_as(error[i]) * error[i]).sum() / (element[i].sum() * 24) for i in range(2)]
        want = torch.stack(per_sample).mean().item()
        assert flow_matching_loss(model, x0, ctx, s, noise, element_weights=element).item() == pytest.approx(want)
        # Uniform element weights leave the loss as it was.
        uniform = flow_matching_loss(model, x0, ctx, s, noise, element_weights=torch.full_like(mask, 3.0))
        assert uniform.item() == pytest.approx(flow_matching_loss(model, x0, ctx, s, noise).item())


def _config(steps, **kw):
    return TeacherTrainConfig(steps=steps, batch_size=2, size=32, frames=9, checkpoint_every=1, warmup_steps=2,
                              temporal_stride=2, dit=SMALL24.to_dict(), eval_every=0, **kw)


def test_a_resumed_run_takes_the_recipe_flags_given_and_refuses_a_new_stride(tmp_path):
    run = tmp_path / "run"
    train_teacher(_config(2), run, threads=1)
    before = load_checkpoint(run / "checkpoint.pt")
    assert before["config"]["object_loss_weight"] == 0.0
    # Resumed with a caller config whose other fields are defaults: only the overrides change the recipe.
    resumed = TeacherTrainConfig(steps=4, dit=SMALL24.to_dict())
    train_teacher(resumed, run, threads=1, overrides={"steps": 4, "object_loss_weight": 4.0, "lr": 1e-4})
    after = load_checkpoint(run / "checkpoint.pt")
    assert after["step"] == 4 and after["config"]["object_loss_weight"] == 4.0 and after["config"]["lr"] == 1e-4
    assert after["config"]["batch_size"] == 2 and after["config"]["temporal_stride"] == 2  # the run's own
    with pytest.raises(AliceError, match="--temporal-stride 4 differs"):
        train_teacher(resumed, run, threads=1, overrides={"temporal_stride": 4})
    with pytest.raises(AliceError, match="--object-loss-weight"):
        train_teacher(_config(1, object_loss_weight=-1.0), tmp_path / "bad", threads=1)


def test_cli_passes_only_the_flags_given_as_overrides(tmp_path, monkeypatch):
    from alice_core.cli import train as train_command

    seen = {}
    monkeypatch.setattr("alice_core.train.teacher.train_teacher",
                        lambda cfg, out, **kw: seen.update(cfg=cfg, overrides=kw["overrides"]))
    args = build_parser().parse_args(["train", "teacher", "--out", str(tmp_path), "--object-loss-weight", "4",
                                      "--high-noise-fraction", "0.3"])
    train_command.run(args)
    assert seen["overrides"] == {"object_loss_weight": 4.0, "high_noise_fraction": 0.3}
    assert seen["cfg"].object_loss_weight == 4.0 and seen["cfg"].lr == TeacherTrainConfig().lr


def test_a_resume_pack_rewarms_the_learning_rate_and_a_checkpoint_does_not(tmp_path):
    from alice_core.train.state import write_run_resume_pack

    run = tmp_path / "run"
    train_teacher(_config(4, lr=1e-3), run, threads=1)
    full = load_checkpoint(run / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"]
    assert full == pytest.approx(1e-3)  # warm after 2 of 4 steps
    write_run_resume_pack(run, tmp_path / "pack")
    # From the pack (fresh Adam moments): the first step runs at half the rate again, the next at the full rate.
    train_teacher(_config(5, lr=1e-3), tmp_path / "from-pack", threads=1, resume_pack=tmp_path / "pack")
    state = load_checkpoint(tmp_path / "from-pack" / "checkpoint.pt")
    assert state["warm_from"] == 4 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    train_teacher(_config(6, lr=1e-3), tmp_path / "from-pack", threads=1)  # exact resume
    assert load_checkpoint(tmp_path / "from-pack" / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
