"""rCM trainer: exact JVP, TrigFlow wrapper, losses that go down, ablation switches, 2-process replicas."""

import math

import numpy as np
import pytest
import torch
from torch.func import jvp

from alice_core.models.config import WanDiTConfig
from alice_core.models.attention import math_attention
from alice_core.models.dit import WanDiT
from alice_core.models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig
from alice_core.train.data import CachedTextEncoder, SyntheticVideoData
from alice_core.train.distill import DistillConfig, Distiller
from alice_core.train.rcm import TrigFlow, critic_loss, dmd_loss, dmd_target, scm_loss, scm_tangent

CFG = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=8, out_dim=8, text_dim=16, text_len=8)


def random_dit(seed=0, cfg=CFG):
    torch.manual_seed(seed)
    model = WanDiT(cfg)
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.2)  # non-zero output so x0/F depend on the network
    return model


def test_dit_jvp_matches_finite_differences():
    model = random_dit().double()
    ctx = torch.randn(2, 5, 16, dtype=torch.float64)
    x = torch.randn(2, 8, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([300.0, 800.0], dtype=torch.float64)
    tx, tt = torch.randn_like(x), torch.tensor([20.0, -40.0], dtype=torch.float64)
    f = lambda x, t: model(x, t, ctx)
    with math_attention():
        out, tangent = jvp(f, (x, t), (tx, tt))
    h = 1e-5
    fd = (f(x + h * tx, t + h * tt) - f(x - h * tx, t - h * tt)) / (2 * h)
    assert torch.allclose(out, f(x, t))
    assert ((tangent - fd).norm() / fd.norm()).item() < 1e-6


def test_trigflow_reproduces_teacher_x0():
    model = random_dit()
    ctx = torch.randn(2, 5, 16)
    x_rf = torch.randn(2, 8, 1, 4, 4)
    s = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        v = model(x_rf, s * 1000, ctx)
        x0_rf = x_rf - s.view(-1, 1, 1, 1, 1) * v  # the teacher's own x0 prediction
        t = torch.atan(s / (1 - s))
        x_t = x_rf * (torch.cos(t) + torch.sin(t)).view(-1, 1, 1, 1, 1)
        tf = TrigFlow(model)
        assert torch.allclose(tf.x0(x_t, t, ctx), x0_rf, atol=1e-5)
        # F = (cos t x_t - x0) / sin t, the TrigFlow velocity.
        ref_F = (torch.cos(t).view(-1, 1, 1, 1, 1) * x_t - x0_rf) / torch.sin(t).view(-1, 1, 1, 1, 1)
        assert torch.allclose(tf.F(x_t, t, ctx), ref_F, atol=1e-4)


def test_trigflow_F_is_cos_z_minus_sin_x0_for_an_exact_velocity():
    x0, z = torch.randn(1, 8, 1, 4, 4), torch.randn(1, 8, 1, 4, 4)
    exact = lambda x, t, c: z - x0  # the true velocity for this (x0, z) pair
    t = torch.tensor([0.7])
    x_t = math.cos(0.7) * x0 + math.sin(0.7) * z
    F = TrigFlow(exact).F(x_t, t, None)
    assert torch.allclose(F, math.cos(0.7) * z - math.sin(0.7) * x0, atol=1e-5)


def batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, 2, 4, 4, generator=g), torch.randn(n, 5, 16, generator=g), torch.zeros(n, 5, 16)


def test_scm_step_lowers_the_consistency_loss_on_a_fixed_batch():
    teacher, student = random_dit(0), random_dit(1)
    x0, ctx, null = batch()
    t, noise = torch.tensor([0.5, 1.2]), torch.randn_like(x0)
    x_t = torch.cos(t).view(-1, 1, 1, 1, 1) * x0 + torch.sin(t).view(-1, 1, 1, 1, 1) * noise
    g, norm = scm_tangent(TrigFlow(student), TrigFlow(teacher), x_t, t, ctx, null, 2.0, 0.5)
    assert (norm > 0).all() and (g.flatten(1).norm(dim=1) < 1).all()  # normalised: |g| / (|g| + 0.1)
    with torch.no_grad():
        F_before = TrigFlow(student).F(x_t, t, ctx)
    opt = torch.optim.SGD(student.parameters(), lr=1e-5)  # loss_scale 100 x a sum over CTHW: small steps
    opt.zero_grad()
    scm_loss(TrigFlow(student), TrigFlow(teacher), x0, ctx, null, t, noise, 2.0, 0.5).loss.backward()
    opt.step()
    with torch.no_grad():
        F_after = TrigFlow(student).F(x_t, t, ctx)
    # The loss with its stop-gradient anchored before the step: sum g^2 before, smaller after.
    assert (F_after - F_before - g).pow(2).sum() < g.pow(2).sum()


def test_critic_and_dmd_losses_go_down_on_a_fixed_batch():
    fake, teacher, student = random_dit(2), random_dit(0), random_dit(1)
    x0, ctx, null = batch(3)
    t = torch.tensor([0.4, 1.1])
    noise = torch.randn_like(x0)
    opt = torch.optim.SGD(fake.parameters(), lr=1e-5)
    before = critic_loss(TrigFlow(fake), x0, ctx, t, noise)
    opt.zero_grad(); before.backward(); opt.step()
    after = critic_loss(TrigFlow(fake), x0, ctx, t, noise)
    assert after.item() < before.item()

    # DMD: after a student step the generated sample is closer to the fixed target sg(G - grad).
    z, t_max = torch.randn_like(x0), torch.full((2,), math.pi / 2)
    generated = TrigFlow(student).x0(z, t_max, ctx)
    target = dmd_target(generated, TrigFlow(fake), TrigFlow(teacher), ctx, null, t, noise, 2.0)
    loss = dmd_loss(generated, TrigFlow(fake), TrigFlow(teacher), ctx, null, t, noise, 2.0)
    assert loss.item() == pytest.approx((generated - target).pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)
    opt_s = torch.optim.SGD(student.parameters(), lr=1e-5)
    opt_s.zero_grad(); loss.backward(); opt_s.step()
    with torch.no_grad():
        after = (TrigFlow(student).x0(z, t_max, ctx) - target).pow(2).sum()
    assert after < (generated.detach() - target).pow(2).sum()


def tiny_data(seed=0):
    from alice_core.loading.text_encoders import load_minilm

    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig(spatial_stride=8, temporal_stride=4, mean=-0.3, std=0.5))
    text = CachedTextEncoder(load_minilm(), 16)
    return SyntheticVideoData(ae, text, size=32, frames=9, rng=np.random.default_rng(seed)), text


DATA_CFG = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=768, out_dim=768, text_dim=384, text_len=16)


@pytest.mark.parametrize("mode,keys", [("rcm", {"scm", "dmd", "critic"}), ("scm", {"scm"}), ("dmd", {"dmd", "critic"})])
def test_distiller_modes_run_and_update(mode, keys):
    data, text = tiny_data()
    cfg = DistillConfig(mode=mode, batch_size=2, tangent_warmup=2, student_update_freq=2, max_simulation_steps=2)
    d = Distiller(random_dit(0, DATA_CFG), cfg, data, text.encode([""]), torch.device("cpu"))
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    seen = set()
    for _ in range(5):
        seen |= set(d.step())
    assert seen == keys
    changed = any(not torch.equal(before[k], v) for k, v in d.student.state_dict().items())
    assert changed
    assert (d.fake is None) == (mode == "scm")


def test_distillation_resumes_to_identical_weights(tmp_path):
    from alice_core.train.distill import distill
    from alice_core.train.state import load_checkpoint

    from tests.bundles import random_tiny_bundle

    bundle = random_tiny_bundle(tmp_path / "bundle")
    cfg = lambda steps: DistillConfig(mode="rcm", steps=steps, batch_size=1, tangent_warmup=1, student_update_freq=2,
                                      max_simulation_steps=2, checkpoint_every=1)
    straight = load_checkpoint(distill(bundle.folder, cfg(4), tmp_path / "a", threads=1))
    distill(bundle.folder, cfg(2), tmp_path / "b", threads=1)
    resumed = load_checkpoint(distill(bundle.folder, cfg(4), tmp_path / "b", threads=1))
    assert straight["step"] == resumed["step"] == 4
    for net in ("student", "fake", "ema"):
        for k in straight[net]:
            assert torch.equal(straight[net][k], resumed[net][k]), f"{net}.{k}"
