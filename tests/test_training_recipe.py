"""Recipe options of the teacher trainer: high-noise time share, Min-SNR weighting, the Haar block latent and the
warm start onto it, the in-training SynthBench probe (metrics.csv), and their CLI flags."""

import csv
import math

import numpy as np
import pytest
import torch

from alice_core.cli import build_parser
from alice_core.errors import AliceError
from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT
from alice_core.models.space_to_depth import (
    SpaceToDepthAutoencoder,
    SpaceToDepthConfig,
    block_haar_matrix,
    haar_matrix,
    latent_affine,
)
from alice_core.train.data import clips_to_video, latent_channel_statistics
from alice_core.train.flow_matching import flow_matching_loss, loss_weights, sample_training_times
from alice_core.train.probe import METRICS_COLUMNS, probe_prompts
from alice_core.train.state import load_checkpoint, read_resume_pack, write_run_resume_pack
from alice_core.train.teacher import TeacherTrainConfig, train_teacher
from alice_core.train.warm_start import refit_latent
from alice_core.world import make_training_batch, parse_prompt, synthbench_prompts

SMALL24 = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=24, out_dim=24, text_dim=384, text_len=32)


def test_high_noise_share_lands_in_its_interval_and_leaves_other_runs_unchanged():
    plain = sample_training_times(4000, 3.0, torch.Generator().manual_seed(0), 0.3)
    same = sample_training_times(4000, 3.0, torch.Generator().manual_seed(0), 0.3, high_noise_fraction=0.0)
    assert torch.equal(plain, same)  # no extra draws: an existing run's random stream is unchanged
    all_high = sample_training_times(4000, 3.0, torch.Generator().manual_seed(0), 0.3, 1.0, 0.8)
    assert all_high.min() >= 0.8 and all_high.max() < 1.0
    half = sample_training_times(20000, 3.0, torch.Generator().manual_seed(0), 0.3, 0.5, 0.8)
    # P(s >= 0.8) = 0.5 + 0.5 * P_plain(s >= 0.8)
    want = 0.5 + 0.5 * (plain >= 0.8).float().mean().item()
    assert (half >= 0.8).float().mean().item() == pytest.approx(want, abs=0.03)


def test_min_snr_weights_follow_the_formula():
    s = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.99])
    snr = ((1 - s) / s) ** 2
    assert torch.allclose(loss_weights(s, "min_snr", 5.0), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert loss_weights(torch.tensor([0.5]), "min_snr", 5.0).item() == pytest.approx(0.5)  # SNR 1
    assert loss_weights(torch.tensor([0.1]), "min_snr", 5.0).item() == pytest.approx(5 / 82)  # SNR 81, capped
    assert torch.equal(loss_weights(s, "none"), torch.ones(5))
    with pytest.raises(AliceError, match="unknown loss weighting"):
        loss_weights(s, "p2")


def test_weighted_loss_is_the_weighted_mean_of_per_sample_errors():
    model = WanDiT(SMALL24).eval()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 24, 2, 4, 4, generator=gen), torch.randn(3, 24, 2, 4, 4, generator=gen)
    ctx, s = torch.randn(3, 5, 384, generator=gen), torch.tensor([0.2, 0.5, 0.9])
    w = torch.tensor([1.0, 0.0, 2.0])
    with torch.no_grad():
        v = model((1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise, s * 1000, ctx)
        errors = ((v - (noise - x0)) ** 2).flatten(1).mean(1)
        assert flow_matching_loss(model, x0, ctx, s, noise, w).item() == pytest.approx((w * errors).mean().item())
        assert flow_matching_loss(model, x0, ctx, s, noise).item() == pytest.approx(errors.mean().item())


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_haar_matrix_is_orthonormal_with_the_average_first(n):
    h = haar_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-12)
    assert torch.allclose(h[0], torch.full((n,), 1 / math.sqrt(n), dtype=h.dtype))
    k = block_haar_matrix(2, 2)
    assert torch.allclose(k @ k.T, torch.eye(8, dtype=k.dtype), atol=1e-12)


@pytest.mark.parametrize("temporal_stride", [1, 2, 4])
def test_haar_latent_is_lossless_and_unit_variance_per_channel(temporal_stride):
    clips, _ = make_training_batch(np.random.default_rng(4), 32, size=32, frames=9)
    video = clips_to_video(clips)
    base = SpaceToDepthConfig(temporal_stride=temporal_stride, block_transform="haar")
    mean, std = latent_channel_statistics(np.random.default_rng(4), 32, 32, 9, base)
    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig(temporal_stride=temporal_stride, mean=mean, std=std,
                                                    block_transform="haar"))
    latent = ae.encode(video)
    back = ((ae.decode(latent) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.array_equal(back, clips)
    # Orthonormal: the un-normalised latent keeps the pixels' energy; normalised, every channel has unit spread
    # on these clips (floored channels less).
    raw = SpaceToDepthAutoencoder(base).encode(video)
    plain = SpaceToDepthAutoencoder(SpaceToDepthConfig(temporal_stride=temporal_stride)).encode(video)
    assert torch.allclose(raw.pow(2).sum(), plain.pow(2).sum(), rtol=1e-5)
    spread = latent.std(dim=(0, 2, 3, 4))
    assert torch.allclose(spread[torch.tensor(std) > 0.02], torch.tensor(1.0), atol=1e-3)
    with pytest.raises(AliceError, match=f"mean has {len(mean)} entries; the latent has 96 channels"):
        SpaceToDepthConfig(temporal_stride=8, mean=mean)


def test_refitted_dit_computes_the_same_velocity_in_the_new_latent():
    gen = torch.Generator().manual_seed(1)
    old = WanDiT(SMALL24).eval()
    with torch.no_grad():
        for p in old.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    clips, _ = make_training_batch(np.random.default_rng(5), 2, size=16 * 2, frames=9)
    video = clips_to_video(clips)
    old_cfg = SpaceToDepthConfig(temporal_stride=2, mean=-0.5, std=0.4)
    mean, std = latent_channel_statistics(np.random.default_rng(5), 16, 32, 9, SpaceToDepthConfig(temporal_stride=2, block_transform="haar"))
    new_cfg = SpaceToDepthConfig(temporal_stride=2, mean=mean, std=std, block_transform="haar")
    a_old, b_old = latent_affine(old_cfg)
    a_new, b_new = latent_affine(new_cfg)
    m = a_old @ torch.linalg.inv(a_new)
    new = WanDiT(SMALL24).eval()
    new.load_state_dict(refit_latent(old.state_dict(), SMALL24, m, b_old - m @ b_new))
    x_old, x_new = SpaceToDepthAutoencoder(old_cfg).encode(video), SpaceToDepthAutoencoder(new_cfg).encode(video)
    t, ctx = torch.tensor([200.0, 800.0]), torch.randn(2, 5, 384, generator=gen)
    with torch.no_grad():
        v_old, v_new = old(x_old, t, ctx), new(x_new, t, ctx)
    assert torch.allclose(torch.einsum("ec,bc...->be...", m.float(), v_new), v_old, atol=1e-4)


def _config(steps, **kw):
    return TeacherTrainConfig(steps=steps, batch_size=2, size=32, frames=9, checkpoint_every=1, warmup_steps=2,
                              temporal_stride=2, dit=SMALL24.to_dict(), eval_every=2, eval_prompts=4, eval_steps=2, **kw)


def _metric_rows(run):
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_probe_logs_metrics_beside_the_loss_and_a_resume_drops_later_rows(tmp_path):
    run = tmp_path / "run"
    train_teacher(_config(4, latent_transform="haar", high_noise_fraction=0.5, loss_weighting="min_snr"), run, threads=1)
    rows = _metric_rows(run)
    assert [int(r["step"]) for r in rows] == [0, 2, 4] and list(rows[0]) == list(METRICS_COLUMNS)
    for row in rows:
        assert 0.0 <= float(row["direction"]) <= 1.0 and float(row["background_rms"]) >= 0.0
    assert math.isnan(float(rows[0]["loss"])) and float(rows[1]["train_seconds"]) > 0
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["config"]["latent_transform"] == "haar" and state["config"]["loss_weighting"] == "min_snr"
    assert state["train_seconds"] == pytest.approx(float(rows[2]["train_seconds"]), abs=0.1)
    # A run resumed from an earlier checkpoint (a kill after step 2) rewrites what came after it.
    write_run_resume_pack(run, tmp_path / "pack")
    assert read_resume_pack(tmp_path / "pack")["config"]["high_noise_fraction"] == 0.5
    early = tmp_path / "early"
    train_teacher(_config(2), early, threads=1)
    (early / "metrics.csv").write_text((run / "metrics.csv").read_text())  # rows up to step 4
    train_teacher(_config(2), early, threads=1)
    assert [int(r["step"]) for r in _metric_rows(early)] == [0, 2]


def test_probe_prompts_are_held_out_and_cover_every_motion():
    prompts = probe_prompts(20)
    assert len(prompts) == 20 and set(prompts) <= set(synthbench_prompts())
    assert {parse_prompt(p).motion for p in prompts} == {"left", "right", "up", "down", "bounce"}


def test_cli_flags_reach_the_run_config(tmp_path, monkeypatch):
    from alice_core.cli import train as train_command

    seen = {}
    monkeypatch.setattr("alice_core.train.teacher.train_teacher", lambda cfg, out, **kw: seen.setdefault("cfg", cfg))
    args = build_parser().parse_args([
        "train", "teacher", "--out", str(tmp_path), "--temporal-stride", "2", "--latent-transform", "haar",
        "--high-noise-fraction", "0.4", "--high-noise-min", "0.85", "--loss-weighting", "min_snr",
        "--min-snr-gamma", "3", "--eval-every", "300", "--eval-steps", "10", "--warmup-steps", "50",
        "--curriculum", "straight_first", "--curriculum-gate", "0.7"])
    train_command.run(args)
    cfg = seen["cfg"]
    assert (cfg.latent_transform, cfg.high_noise_fraction, cfg.high_noise_min, cfg.loss_weighting) == ("haar", 0.4, 0.85, "min_snr")
    assert (cfg.min_snr_gamma, cfg.eval_every, cfg.eval_steps, cfg.warmup_steps) == (3.0, 300, 10, 50)
    assert (cfg.curriculum, cfg.curriculum_gate) == ("straight_first", 0.7)
    assert WanDiTConfig.from_dict(cfg.dit).in_dim == 24
    with pytest.raises(AliceError, match="--high-noise-fraction"):
        train_teacher(_config(1, high_noise_fraction=1.5), tmp_path / "bad", threads=1)


def test_x0_error_of_a_network_that_predicts_no_velocity_is_the_error_of_the_noisy_clip_itself():
    from alice_core.train.probe import ProbeSettings, TrainingProbe

    clips, _ = make_training_batch(np.random.default_rng(6), 3, size=32, frames=9)
    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig(temporal_stride=2, mean=-0.5, std=0.5))
    latents = ae.encode(clips_to_video(clips))
    ctx = torch.zeros(3, 32, 384)
    probe = TrainingProbe(ProbeSettings(prompts=1), SMALL24, ae, ctx[:1], ctx[:1], ["a red ball"], (24, 5, 16, 16),
                          torch.device("cpu"), (clips, latents, ctx))
    probe.model.load_state_dict({k: torch.zeros_like(v) for k, v in probe.model.state_dict().items()})
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))  # the probe's stream: seed + 1
    want = []
    for level in (0.85, 0.95, 1.0):
        video = ae.decode((1 - level) * latents + level * noise)  # x0 = x_s when v = 0
        want.append((((video + 1) * 127.5 - torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float()) ** 2).mean())
    with torch.inference_mode():
        got = probe._x0_rmse((0.85, 0.95, 1.0))
    assert got == pytest.approx(float(torch.stack(want).mean().sqrt()), rel=1e-5) and got > 30


def test_straight_first_curriculum_holds_back_bounces_until_the_direction_gate(tmp_path):
    from alice_core.train.teacher import _curriculum_weights

    cfg = _config(2, curriculum="straight_first", curriculum_gate=2.0)  # a gate no score reaches
    weights = _curriculum_weights(cfg, 0)
    _, captions = make_training_batch(np.random.default_rng(0), 200, size=32, frames=9, hard_weights=weights)
    assert all(parse_prompt(c).motion not in (None, "bounce") for c in captions)
    assert _curriculum_weights(cfg, 1) is None and _curriculum_weights(_config(2), 0) is None
    train_teacher(cfg, tmp_path / "held", threads=1)
    assert load_checkpoint(tmp_path / "held" / "checkpoint.pt")["curriculum_stage"] == 0
    train_teacher(_config(2, curriculum="straight_first", curriculum_gate=0.0), tmp_path / "open", threads=1)
    assert load_checkpoint(tmp_path / "open" / "checkpoint.pt")["curriculum_stage"] == 1
    with pytest.raises(AliceError, match="--eval-every"):
        train_teacher(TeacherTrainConfig(curriculum="straight_first", eval_every=0), tmp_path / "bad", threads=1)


def test_pack_command_keeps_its_dispatch_function(tmp_path):
    args = build_parser().parse_args(["train", "pack", str(tmp_path / "run"), str(tmp_path / "pack")])
    assert callable(args.run) and args.run_dir == str(tmp_path / "run")


def test_per_frame_levels_equal_to_the_sample_level_give_the_same_loss_and_own_levels_reach_the_tokens():
    from alice_core.train.flow_matching import per_frame_times

    gen = torch.Generator().manual_seed(3)
    model = WanDiT(SMALL24).init_weights().eval()
    x0, noise = torch.randn(2, 24, 5, 8, 8, generator=gen), torch.randn(2, 24, 5, 8, 8, generator=gen)
    ctx, s = torch.randn(2, 6, 384, generator=gen), torch.tensor([0.3, 0.9])
    same = per_frame_times(s, 5, 0.0, 3.0, gen)
    assert same.shape == (2, 5) and torch.equal(same, s[:, None].expand(2, 5))
    with torch.no_grad():
        assert torch.allclose(flow_matching_loss(model, x0, ctx, same, noise), flow_matching_loss(model, x0, ctx, s, noise),
                              rtol=1e-5, atol=1e-6)
    own = per_frame_times(s, 5, 1.0, 3.0, gen)
    assert own.shape == (2, 5) and own.std(dim=1).min() > 0.01 and ((own > 0) & (own < 1)).all()
    # Frame 0 clean, the rest pure noise: the per-token loss is the mixture of the two per-frame losses.
    levels = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]] * 2)
    with torch.no_grad():
        mixed = flow_matching_loss(model, x0, ctx, levels, noise)
        t = torch.tensor([[0.0] * 16 + [1000.0] * 64] * 2)
        x_s = torch.cat([x0[:, :, :1], noise[:, :, 1:]], dim=2)
        want = (model(x_s, t, ctx) - (noise - x0)).pow(2).mean()
    assert torch.allclose(mixed, want, rtol=1e-5)


def test_text_motion_px_is_zero_for_a_network_blind_to_text_and_travel_matches_the_renderer():
    from alice_core.train.probe import ProbeSettings, TrainingProbe, object_travel
    from alice_core.train.teacher import _motion_validation
    from alice_core.loading.text_encoders import load_minilm
    from alice_core.train.data import CachedTextEncoder
    from alice_core.world.render import object_positions, render_clip, sample_clip_spec, HardExampleWeights

    cfg = _config(1)
    ae = SpaceToDepthAutoencoder(cfg.autoencoder_config(-0.5, 0.5))
    mv = _motion_validation(cfg, ae, CachedTextEncoder(load_minilm(), 32))
    rng = np.random.default_rng([cfg.seed, 98])  # the same clips, to compare with the renderer's own positions
    specs = [sample_clip_spec(rng, 32, 9, HardExampleWeights(bounce=0.0), motion=d)
             for d in ("left", "right", "up", "down") for _ in range(2)]
    truth = []
    for spec in specs:
        track = object_positions(spec.objects[0], 9)
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[spec.objects[0].motion]
        truth.append((track[-1, 0] - track[0, 0]) * dx + (track[-1, 1] - track[0, 1]) * dy)
    np.testing.assert_allclose(object_travel(ae.decode(mv.latents), mv.background, mv.axes).numpy(), truth, atol=0.6)
    probe = TrainingProbe(ProbeSettings(prompts=1), SMALL24, ae, mv.own[:1], mv.own[0], ["x"], (24, 5, 16, 16),
                          torch.device("cpu"), None, mv)
    gen = torch.Generator().manual_seed(2)
    weights = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in WanDiT(SMALL24).state_dict().items()}
    probe.model.load_state_dict(weights)
    with torch.inference_mode():
        reading = probe._text_motion_px()
    assert reading != 0.0  # a random network's output depends on the prompt
    weights = {k: torch.zeros_like(v) if "cross_attn.o." in k else v for k, v in weights.items()}
    probe.model.load_state_dict(weights)  # no cross-attention output: the prompt cannot reach the prediction
    with torch.inference_mode():
        assert probe._text_motion_px() == 0.0


def test_bf16_autocast_and_frame_noise_train_and_bad_values_name_the_flag(tmp_path):
    run = tmp_path / "run"
    cfg = _config(2, autocast="bf16", frame_noise_fraction=0.5)
    cfg.eval_every = 0
    train_teacher(cfg, run, threads=1)
    assert load_checkpoint(run / "checkpoint.pt")["config"]["autocast"] == "bf16"
    with pytest.raises(AliceError, match="--autocast"):
        train_teacher(_config(1, autocast="fp8"), tmp_path / "bad", threads=1)
    with pytest.raises(AliceError, match="--frame-noise-fraction"):
        train_teacher(_config(1, frame_noise_fraction=2.0), tmp_path / "bad2", threads=1)
