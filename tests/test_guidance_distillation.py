"""Guidance distillation (`alice train distill --mode cfg`) and an rCM run that starts from its student."""

import numpy as np
import pytest
import torch

from alice_core.errors import AliceError
from alice_core.train.distill import DistillConfig, Distiller, build_distiller, distill
from alice_core.train.rcm import TrigFlow, guidance_distillation_loss
from alice_core.train.teacher import export_dit

from tests.bundles import random_tiny_bundle, save_dit
from tests.test_rcm import DATA_CFG, batch, random_dit, tiny_data


def explicit_guided_F(net, x_t, t, ctx, null, w):
    """The guided TrigFlow velocity written out from the network's RF velocity (Wan interface), as CFG is defined
    on it: v = v_u + w (v_c - v_u) at x_rf = x_t / (cos t + sin t), RF time s = sin t / (cos t + sin t);
    F = (cos t x_t - x0) / sin t with x0 = x_rf - s v."""
    cs = (torch.cos(t) + torch.sin(t)).view(-1, 1, 1, 1, 1)
    x_rf, s = x_t / cs, torch.sin(t) / (torch.cos(t) + torch.sin(t))
    v_c, v_u = net(x_rf, s * 1000, ctx), net(x_rf, s * 1000, null)
    x0 = x_rf - s.view(-1, 1, 1, 1, 1) * (v_u + w * (v_c - v_u))
    return (torch.cos(t).view(-1, 1, 1, 1, 1) * x_t - x0) / torch.sin(t).view(-1, 1, 1, 1, 1)


def test_loss_is_the_distance_to_the_teachers_guided_velocity():
    teacher, student = random_dit(0), random_dit(1)
    x0, ctx, null = batch()
    null = torch.randn_like(null)  # a real null embedding is not zero; zeros would hide a swapped argument
    t, noise = torch.tensor([0.5, 1.3]), torch.randn_like(x0)
    x_t = torch.cos(t).view(-1, 1, 1, 1, 1) * x0 + torch.sin(t).view(-1, 1, 1, 1, 1) * noise
    with torch.no_grad():
        target = explicit_guided_F(teacher, x_t, t, ctx, null, 3.0)
        ref = (explicit_guided_F(student, x_t, t, ctx, null, 1.0) - target).pow(2).flatten(1).sum(1).mean()
        loss = guidance_distillation_loss(TrigFlow(student), TrigFlow(teacher), x0, ctx, null, t, noise, 3.0)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
        # A student that is the teacher has nothing to learn at guidance 1, and something at guidance 3.
        same = guidance_distillation_loss(TrigFlow(teacher), TrigFlow(teacher), x0, ctx, null, t, noise, 1.0)
        assert same.item() == 0.0
        assert guidance_distillation_loss(TrigFlow(teacher), TrigFlow(teacher), x0, ctx, null, t, noise, 3.0) > 0


def test_cfg_mode_moves_the_one_pass_student_towards_the_guided_teacher():
    data, text = tiny_data()
    teacher = random_dit(0, DATA_CFG)
    cfg = DistillConfig(mode="cfg", batch_size=4, student_lr=1e-4, guidance=3.0)
    d = Distiller(teacher, cfg, data, text.encode([""]), torch.device("cpu"))
    assert d.fake is None
    # A held-out batch the training never draws: rendered clips of another stream, fixed noise and times.
    held_out, _ = tiny_data(seed=7)
    x0, ctx, _ = held_out.batch(4)
    null = text.encode([""]).expand_as(ctx)
    t = torch.tensor([0.3, 0.8, 1.2, 1.5])
    x_t = torch.cos(t).view(-1, 1, 1, 1, 1) * x0 + torch.sin(t).view(-1, 1, 1, 1, 1) * torch.randn_like(x0)

    def gap() -> float:
        with torch.no_grad():
            target = explicit_guided_F(teacher, x_t, t, ctx, null, 3.0)
            return (explicit_guided_F(d.student, x_t, t, ctx, null, 1.0) - target).norm().item()

    before = gap()
    logs = [d.step() for _ in range(40)]
    assert all(set(entry) == {"cfg"} for entry in logs)
    assert gap() < 0.9 * before  # 27.5 -> 22.7 at these seeds


def test_an_rcm_run_starts_from_the_exported_guidance_student(tmp_path):
    bundle = random_tiny_bundle(tmp_path / "bundle")
    first = distill(bundle.folder, DistillConfig(mode="cfg", steps=2, batch_size=1, checkpoint_every=1),
                    tmp_path / "cfg", threads=1)
    start = export_dit(first, tmp_path / "cfg_student.safetensors", dtype=torch.float32)
    cfg = DistillConfig(mode="rcm", batch_size=1, tangent_warmup=1, init_student=str(start))
    d = build_distiller(bundle.folder, cfg)
    exported = load_weights(start)
    teacher = d.teacher.state_dict()
    assert any(not torch.equal(exported[k], teacher[k]) for k in exported)  # the cfg stage changed something
    for k, v in d.student.state_dict().items():
        assert torch.equal(v, exported[k]), k
    for k, v in d.ema.state_dict().items():
        assert torch.equal(v, exported[k]), k
    assert d.fake is not None and all(torch.equal(v, teacher[k]) for k, v in d.fake.state_dict().items())


def load_weights(path):
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}


def test_a_student_of_another_architecture_is_refused_naming_the_flag(tmp_path):
    bundle = random_tiny_bundle(tmp_path / "bundle")
    other = random_tiny_bundle(tmp_path / "other", dim=64)
    cfg = DistillConfig(init_student=str(other.dits["rcm"]))
    with pytest.raises(AliceError, match="--init-student .*architecture differs"):
        build_distiller(bundle.folder, cfg)
