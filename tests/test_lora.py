"""LoRA files in kohya, PEFT/diffusers and lightx2v styles, built here from small random weights: the effective
weight must be W + strength * scale * B @ A (scale = alpha / rank), merged or as a separate adapter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.loading.dit import build_dit, load_dit
from alice_core.loading.lora import apply_lora, effective_weight, remove_loras
from alice_core.models.config import WanDiTConfig
from tests.test_formats import random_state

CFG = WanDiTConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, text_dim=32, freq_dim=32, text_len=8)
RANK = 4


def low_rank(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, RANK, generator=g) * 0.1, torch.randn(RANK, in_features, generator=g) * 0.1


def kohya_lora(alpha: float = 2.0) -> tuple[dict, dict]:
    """kohya naming; returns (file, {official module: (B, A, alpha / rank)})."""
    targets = {"blocks.0.self_attn.q": (64, 64), "blocks.1.ffn.0": (96, 64), "text_embedding.0": (64, 32)}
    file, expected = {}, {}
    for i, (module, (out_f, in_f)) in enumerate(targets.items()):
        up, down = low_rank(out_f, in_f, i)
        name = "lora_unet_" + module.replace(".", "_")
        file |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(alpha)}
        expected[module] = (up, down, alpha / RANK)
    return file, expected


def peft_lora() -> tuple[dict, dict]:
    """PEFT lora_A/lora_B in official names under `diffusion_model.` and in diffusers names under `transformer.`."""
    file, expected = {}, {}
    up, down = low_rank(64, 64, 10)
    file |= {"diffusion_model.blocks.1.cross_attn.k.lora_A.weight": down,
             "diffusion_model.blocks.1.cross_attn.k.lora_B.weight": up}
    expected["blocks.1.cross_attn.k"] = (up, down, 1.0)
    up, down = low_rank(64, 64, 11)
    file |= {"transformer.blocks.0.attn1.to_out.0.lora_A.weight": down,
             "transformer.blocks.0.attn1.to_out.0.lora_B.weight": up,
             "transformer.blocks.0.attn1.to_out.0.alpha": torch.tensor(8.0)}
    expected["blocks.0.self_attn.o"] = (up, down, 8.0 / RANK)
    up, down = low_rank(64, 96, 12)
    file |= {"transformer.blocks.0.ffn.net.2.lora_A.weight": down, "transformer.blocks.0.ffn.net.2.lora_B.weight": up}
    expected["blocks.0.ffn.2"] = (up, down, 1.0)
    return file, expected


def expected_weights(model, expected: dict, strength: float) -> dict[str, torch.Tensor]:
    """W + strength * scale * B @ A, from the model's weights before the LoRA was applied."""
    out = {}
    for module, (up, down, scale) in expected.items():
        out[module] = effective_weight(model.get_submodule(module)) + strength * scale * (up @ down)
    return out


@pytest.fixture
def model():
    return build_dit(random_state(CFG), CFG)


@pytest.mark.parametrize("make", [kohya_lora, peft_lora])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_low_rank_merged_into_full_precision(model, make, strength):
    file, expected = make()
    target = expected_weights(model, expected, strength)
    untouched = model.blocks[1].self_attn.v.weight.clone()
    report = apply_lora(model, file, strength)
    assert report.matched == len(file) and not report.unmatched
    assert sorted(report.merged) == sorted(m + ".weight" for m in expected) and not report.adapters
    for module, weight in target.items():
        torch.testing.assert_close(model.get_submodule(module).weight, weight, rtol=1e-6, atol=1e-6)
    assert torch.equal(model.blocks[1].self_attn.v.weight, untouched)


def test_lightx2v_diff_and_diff_b(model):
    g = torch.Generator().manual_seed(5)
    file = {
        "diffusion_model.blocks.0.norm3.diff": torch.randn(64, generator=g),
        "diffusion_model.blocks.0.self_attn.norm_q.diff": torch.randn(64, generator=g),
        "diffusion_model.blocks.1.modulation.diff": torch.randn(1, 6, 64, generator=g),
        "diffusion_model.head.head.diff_b": torch.randn(64, generator=g),
        "diffusion_model.blocks.1.ffn.2.diff": torch.randn(64, 96, generator=g),
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_lora(model, file, strength=0.5)
    assert report.matched == 5 and not report.unmatched
    after = model.state_dict()
    for key, param in (("blocks.0.norm3.weight", "diffusion_model.blocks.0.norm3.diff"),
                       ("blocks.0.self_attn.norm_q.weight", "diffusion_model.blocks.0.self_attn.norm_q.diff"),
                       ("blocks.1.modulation", "diffusion_model.blocks.1.modulation.diff"),
                       ("head.head.bias", "diffusion_model.head.head.diff_b"),
                       ("blocks.1.ffn.2.weight", "diffusion_model.blocks.1.ffn.2.diff")):
        torch.testing.assert_close(after[key], before[key] + 0.5 * file[param])


def test_unmatched_keys_are_listed(model):
    file, _ = kohya_lora()
    up, down = low_rank(64, 64, 20)
    file |= {
        "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": down,  # an I2V layer this model lacks
        "diffusion_model.blocks.0.cross_attn.k_img.lora_B.weight": up,
        "diffusion_model.blocks.0.self_attn.v.lora_A.weight": torch.randn(RANK, 128),  # a bigger model's LoRA
        "diffusion_model.blocks.0.self_attn.v.lora_B.weight": torch.randn(128, RANK),
        "diffusion_model.blocks.1.self_attn.q.lora_A.weight": down,  # lora_B missing
        "some_training_step": torch.tensor(3),
    }
    report = apply_lora(model, file)
    assert report.matched == 9 and report.total == 15
    assert set(report.unmatched) == {
        "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight",
        "diffusion_model.blocks.0.cross_attn.k_img.lora_B.weight",
        "diffusion_model.blocks.0.self_attn.v.lora_A.weight", "diffusion_model.blocks.0.self_attn.v.lora_B.weight",
        "diffusion_model.blocks.1.self_attn.q.lora_A.weight", "some_training_step",
    }
    reason = report.unmatched["diffusion_model.blocks.0.self_attn.v.lora_A.weight"]
    assert "does not fit blocks.0.self_attn.v [64, 64]" in reason
    summary = report.summary()
    assert "matched 9/15" in summary and "k_img" in summary


@pytest.mark.parametrize("precision", ["fp8_e4m3fn", "nf4"])
def test_quantised_base_keeps_lora_separate(precision, tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in random_state(CFG).items()}, str(path))
    model = load_dit(path, CFG, precision=precision)
    file, expected = kohya_lora(alpha=4.0)
    layer = model.blocks[0].self_attn.q
    base = layer.dequantized_weight(torch.float32).clone()
    x = torch.randn(3, 64).to(torch.bfloat16)
    before = layer(x)

    with pytest.raises(AliceError, match="cannot merge a LoRA into the quantised layer"):
        apply_lora(model, file, 0.8, merge=True)
    report = apply_lora(model, file, 0.8)
    assert report.matched == 9
    assert "blocks.0.self_attn.q" in report.adapters and "text_embedding.0.weight" in report.merged  # bf16 layer: merged
    up, down, scale = expected["blocks.0.self_attn.q"]
    effective = base + 0.8 * scale * (up @ down)
    torch.testing.assert_close(effective_weight(layer), effective, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(layer.dequantized_weight(torch.float32), base)  # the quantised weight is untouched
    # The forward pass applies the adapter: base output plus x @ (strength * scale * B @ A)^T.
    delta = F.linear(x.float(), 0.8 * scale * (up @ down))
    torch.testing.assert_close(layer(x).float(), before.float() + delta, rtol=2e-2, atol=2e-2)

    assert remove_loras(model) == 2  # q and ffn.0 adapters
    assert torch.equal(layer(x), before)


def test_separate_on_full_precision_when_asked(model):
    file, expected = peft_lora()
    x = torch.randn(2, 5, 96)
    layer = model.blocks[0].ffn[2]
    before, weight = layer(x), layer.weight.clone()
    report = apply_lora(model, file, 1.5, merge=False)
    assert len(report.adapters) == 3 and not report.merged
    assert torch.equal(layer.weight, weight)
    up, down, scale = expected["blocks.0.ffn.2"]
    torch.testing.assert_close(layer(x), before + F.linear(x, 1.5 * scale * (up @ down)), rtol=1e-5, atol=1e-5)
    remove_loras(model)
    assert torch.equal(layer(x), before)


def test_lora_file_from_disk(model, tmp_path):
    file, expected = kohya_lora()
    path = tmp_path / "style.safetensors"
    save_file(file, str(path))
    target = expected_weights(model, expected, 1.0)
    report = apply_lora(model, path)
    assert report.source == str(path) and report.matched == 9
    torch.testing.assert_close(model.blocks[1].ffn[0].weight, target["blocks.1.ffn.0"], rtol=1e-6, atol=1e-6)
