"""benchmarks/expert_pair_memory.py's reduced pair: the two files it writes load as one Wan2.2 I2V expert pair whose
weight bytes, per precision, are the bytes planned on the meta device for that architecture (what its full-size
table prints; within 0.1%, as test_quant holds a loaded model), and the two experts differ. The benchmark once
failed on a moved import before measuring anything."""

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
