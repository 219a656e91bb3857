"""benchmarks/expert_pair_memory.py's reduced pair: the two files it writes load as one Wan2.2 I2V expert pair whose
weight bytes, per precision, are the bytes planned on the meta device for that architecture (what its full-size
table prints; within 0.1%, as test_quant holds a loaded model), and the two experts differ. The benchmark once
failed on a moved import before measuring anything. Its full-size table is held to the parameters of diffusers'
WanTransformer3DModel in the A14B configuration."""

from __future__ import annotations

import pytest
import torch

import benchmarks.expert_pair_memory as bench
from alice_core.loading.dit import planned_weight_bytes
from alice_core.loading.experts import load_expert_pair
from alice_core.loading.quant import weight_bytes
from alice_core.models.config import WanDiTConfig

TINY = WanDiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=36, text_dim=64, freq_dim=64)


@pytest.mark.parametrize("precision", ["bf16", "nf4"])
def test_the_reduced_pair_loads_with_the_planned_bytes(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(bench, "REDUCED", TINY)
    high, low = bench.write_pair(tmp_path / "pair")
    assert bench.write_pair(tmp_path / "pair") == (high, low)  # written once, reused by later runs
    pair = load_expert_pair(high, low, precision, boundary=0.9)
    assert pair.high.config.in_dim == 36 and pair.boundary == 0.9
    planned = 2 * planned_weight_bytes(TINY, precision)  # NF4's quantisation state varies by a few bytes
    assert abs(weight_bytes(pair.high) + weight_bytes(pair.low) - planned) <= 0.001 * planned
    assert not torch.equal(pair.high.head.head.weight, pair.low.head.head.weight)


def diffusers_counts(layers: int) -> tuple[int, int, int]:
    """(all parameters, block Linear weights, block Linears) of diffusers' WanTransformer3DModel in Wan2.2 I2V-A14B's
    configuration (Wan-AI/Wan2.2-I2V-A14B-Diffusers transformer/config.json) with `layers` blocks, on meta."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6)
    linear = [m.weight.numel() for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name.startswith("blocks.")]
    return sum(p.numel() for p in model.state_dict().values()), sum(linear), len(linear)


def test_full_size_table_is_the_a14b_experts_bytes_counted_from_diffusers():
    """The table's bytes per expert from diffusers' own module tree (40 blocks: the 1-block count plus 39 blocks'
    increment): bf16 2 bytes per parameter (14.29e9 parameters: 26.62 GiB); fp8 1 byte per block Linear weight
    with its fp32 scale, the rest bf16 (13.53 GiB); NF4 half a byte per block Linear weight plus bitsandbytes'
    absmax byte per 64 weights (7.19 GiB, the double-quantisation tables within 0.1%)."""
    (one, lin_one, n_one), (two, lin_two, n_two) = diffusers_counts(1), diffusers_counts(2)
    params, linear, layers = (one + 39 * (two - one), lin_one + 39 * (lin_two - lin_one), n_one + 39 * (n_two - n_one))
    assert round(params / 1e9, 2) == 14.29
    expected = {"bf16": 2 * params, "fp8_e4m3fn": linear + 4 * layers + 2 * (params - linear),
                "nf4": linear // 2 + linear // 64 + 2 * (params - linear)}
    table = bench.full_size_table(list(expected)).splitlines()[2:]
    gib = 2**30
    for row, (mode, nbytes) in zip(table, expected.items(), strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        one_expert, pair = (float(c.removesuffix(" GiB")) for c in cells[1:])
        assert cells[0] == mode
        for shown, want in ((one_expert, nbytes), (pair, 2 * nbytes)):
            # the table rounds to 0.01 GiB; NF4's double-quantisation tables are left out of `expected`
            assert abs(shown * gib - want) <= 0.005 * gib + (0.001 * want if mode == "nf4" else 0), (mode, shown)
    planned = {mode: planned_weight_bytes(bench.dit_preset("wan2.2-i2v-a14b"), mode) for mode in expected}
    assert planned["bf16"] == expected["bf16"] and planned["fp8_e4m3fn"] == expected["fp8_e4m3fn"]
    assert abs(planned["nf4"] - expected["nf4"]) <= 0.001 * expected["nf4"]
