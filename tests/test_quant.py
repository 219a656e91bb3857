"""Precision modes: fp8 / NF4 layers against plain float references, streaming quantised loading, umT5 modes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import alice_core.loading.quant as quant
from alice_core.loading.precision import FP8_PRECISIONS
from alice_core.errors import AliceError
from alice_core.loading.dit import load_dit
from alice_core.loading.dit import planned_weight_bytes
from alice_core.loading.quant import Fp8Linear, fp8_ops, nf4_linear_class, quantize_fp8, weight_bytes
from alice_core.models.config import WanDiTConfig
from tests.test_formats import random_state, write_variant

REPO = Path(__file__).resolve().parents[1]
# Most weights in the blocks, as in real Wan models.
CFG = WanDiTConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=4, text_dim=64, freq_dim=32, text_len=16)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("fp8_dtype, bound", [(torch.float8_e4m3fn, 0.04), (torch.float8_e5m2, 0.08)])
def test_fp8_quantisation_uses_the_full_range(fp8_dtype, bound):
    w = torch.randn(64, 96) * 0.03
    q, scale = quantize_fp8(w, fp8_dtype)
    assert q.dtype == fp8_dtype and scale.shape == () and scale.dtype == torch.float32
    assert q.float().abs().max().item() == torch.finfo(fp8_dtype).max  # amax lands on the largest fp8 value
    assert 0 < rel_err(q.float() * scale, w) < bound


def make_fp8_linear(in_features=64, out_features=48, fp8_dtype=torch.float8_e4m3fn, fast=True) -> Fp8Linear:
    layer = fp8_ops(fp8_dtype, fast_matmul=fast).Linear(in_features, out_features)
    w = torch.randn(out_features, in_features) / in_features**0.5
    layer.set_weight(w)
    layer.bias = nn.Parameter(torch.randn(out_features).to(torch.bfloat16), requires_grad=False)
    return layer


def test_fp8_linear_upcasts_on_cpu():
    layer = make_fp8_linear()
    x = torch.randn(2, 5, 64)
    weight = layer.weight.to(torch.bfloat16) * layer.weight_scale.to(torch.bfloat16)
    expected = F.linear(x.to(torch.bfloat16), weight, layer.bias)
    assert torch.equal(layer(x), expected)


def test_fp8_fast_matmul_path_where_supported_and_fallback_elsewhere(monkeypatch):
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = make_fp8_linear()
    x = torch.randn(3, 7, 64)
    upcast = layer(x)
    assert not calls  # CPU: no fp8 matmul hardware, the upcast path runs

    monkeypatch.setattr(quant, "_fp8_matmul_supported", lambda device: True)  # pretend compute capability 8.9+
    fast = layer(x)
    assert len(calls) == 1 and fast.shape == upcast.shape and fast.dtype == torch.bfloat16
    assert rel_err(fast, upcast) < 0.05  # only the activation's fp8 rounding differs

    for odd in (make_fp8_linear(in_features=40), make_fp8_linear(fp8_dtype=torch.float8_e5m2), make_fp8_linear(fast=False)):
        odd(torch.randn(2, odd.in_features))
    assert len(calls) == 1  # sizes not multiple of 16, e5m2 weights, or fast path off: fall back


def test_a_failing_fp8_matmul_falls_back_to_upcasting_once(monkeypatch, caplog):
    calls = []

    def refusing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Only tensorwise scaling with contiguous inputs\nsecond line")

    ops = fp8_ops()
    layers = [ops.Linear(64, 48), ops.Linear(64, 32)]
    for layer in layers:
        layer.set_weight(torch.randn(layer.out_features, 64) / 8)
        with torch.no_grad():  # the layers are built empty, as checkpoints fill them: give the bias values too
            layer.bias.copy_(torch.randn(layer.out_features))
    x = torch.randn(3, 64)
    expected = [layer(x) for layer in layers]  # CPU: the upcast path
    assert all(torch.isfinite(e).all() for e in expected)
    monkeypatch.setattr(quant, "_fp8_matmul_supported", lambda device: True)
    monkeypatch.setattr(torch, "_scaled_mm", refusing)
    with caplog.at_level(logging.WARNING):
        got = [layer(x) for layer in layers] + [layers[0](x)]
    assert len(calls) == 1  # the model's fp8 layers stop trying after the first failure
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[0])
    assert [r.getMessage() for r in caplog.records] == [
        "fp8 matmul (torch._scaled_mm) failed (Only tensorwise scaling with contiguous inputs); fp8 weights are "
        "upcast to bfloat16 instead"
    ]
    assert fp8_ops().Linear.fast_matmul  # another model's layers still try the fast path


def test_nf4_linear_against_dequantised_reference():
    w = torch.randn(48, 64) / 8
    layer = nf4_linear_class()(64, 48)
    layer.set_weight(w)
    layer.bias = nn.Parameter(torch.randn(48).to(torch.bfloat16), requires_grad=False)
    deq = layer.dequantized_weight(torch.float32)
    assert 0 < rel_err(deq, w) < 0.12  # 4-bit NF4 with a 64-value block absmax
    # Dequantised values come from NF4's 16-level table scaled per block of 64.
    per_block = deq.flatten().reshape(-1, 64)
    assert all(len(torch.unique(b)) <= 16 for b in per_block)
    x = torch.randn(4, 64)
    expected = F.linear(x, deq, layer.bias.float())
    torch.testing.assert_close(layer(x.to(torch.bfloat16)).float(), expected, atol=0.03, rtol=0.03)


def test_missing_bitsandbytes_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(AliceError, match="pip install bitsandbytes"):
        quant._import_bitsandbytes()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "dit.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in random_state(CFG, seed=3).items()}, str(path),
              metadata={"alice_dit_config": json.dumps(CFG.to_dict())})
    return path


def test_precision_modes_store_what_they_say(checkpoint):
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([700.0]), torch.randn(1, 16, 64, generator=g)
    with torch.no_grad():
        reference = load_dit(checkpoint, precision="fp32")(x, t, ctx)
    sizes, errors = {}, {}
    for precision in ("bf16", "fp8_e4m3fn", "fp8_e5m2", "nf4"):
        model = load_dit(checkpoint, precision=precision)
        q, head = model.blocks[0].self_attn.q, model.text_embedding[0]
        if precision.startswith("fp8"):
            assert isinstance(q, Fp8Linear) and q.weight.dtype == FP8_PRECISIONS[precision]
        if precision == "nf4":
            assert isinstance(q, nf4_linear_class()) and q.weight.dtype == torch.uint8
        assert head.weight.dtype == torch.bfloat16 and not quant.is_quantized_linear(head)  # embeddings stay bf16
        assert model.dtype == torch.bfloat16
        with torch.no_grad():
            out = model(x.to(torch.bfloat16), t, ctx.to(torch.bfloat16))
        sizes[precision], errors[precision] = weight_bytes(model), rel_err(out, reference)
        # the meta-device estimate used to size full 14B experts: exact, or within 0.1% for NF4 (its statistics)
        assert abs(planned_weight_bytes(CFG, precision) - sizes[precision]) <= 0.001 * sizes[precision], precision
    assert sizes["fp8_e4m3fn"] == sizes["fp8_e5m2"] < 0.6 * sizes["bf16"]
    assert sizes["nf4"] < 0.4 * sizes["bf16"]
    assert all(0 < e < 0.05 for e in errors.values()), errors
    with pytest.raises(AliceError, match="unknown precision 'int4'"):
        load_dit(checkpoint, precision="int4")


def test_scaled_fp8_file_keeps_its_bytes_in_fp8_mode(tmp_path):
    path, _ = write_variant(random_state(), "comfy-scaled-fp8", tmp_path)
    model = load_dit(path, precision="fp8_e4m3fn")
    layer = model.blocks[1].ffn[0]
    with safe_open(str(path), "pt") as f:
        stored, scale = f.get_tensor("blocks.1.ffn.0.weight"), f.get_tensor("blocks.1.ffn.0.scale_weight")
    assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))
    assert layer.weight_scale.item() == scale.item()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_quantised_load_never_holds_a_full_precision_copy(tmp_path):
    """Peak memory growth while loading a ~210 MB bf16 checkpoint, in fresh processes: fp8 and NF4 stay near
    their own size, a bf16 load needs the full size. glibc's malloc is told to return large blocks right away,
    so the peak measures live tensors rather than heap fragmentation."""
    cfg = WanDiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=6, text_dim=64, freq_dim=32)
    big, small = tmp_path / "big.safetensors", tmp_path / "small.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in random_state(cfg).items()}, str(big))
    save_file({k: v.to(torch.bfloat16) for k, v in random_state(CFG).items()}, str(small))
    code = textwrap.dedent(
        """
        import re, sys, psutil
        from alice_core.loading.dit import load_dit
        load_dit(sys.argv[3], precision=sys.argv[2])  # warm-up: imports and first-use allocations
        before = psutil.Process().memory_info().rss
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM)
        model = load_dit(sys.argv[1], precision=sys.argv[2])
        print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024 - before)
        """
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    growth = {}
    for precision in ("fp8_e4m3fn", "nf4", "bf16"):
        result = subprocess.run([sys.executable, "-c", code, str(big), precision, str(small)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        growth[precision] = int(result.stdout.split()[-1]) / big.stat().st_size
    assert growth["bf16"] > 0.95, growth  # the measurement sees a full-size load
    assert growth["fp8_e4m3fn"] < 0.7, growth
    assert growth["nf4"] < 0.7, growth


# -- umT5 ---------------------------------------------------------------------------------------------------------
WAN_NAMES = {  # transformers UMT5 name -> Wan's encoder checkpoint name (written out independently here)
    "layer.0.layer_norm.weight": "norm1.weight", "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight", "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight", "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight", "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory):
    from transformers import UMT5Config, UMT5EncoderModel

    from tests.test_text_encoders import build_tokenizer

    root = tmp_path_factory.mktemp("umt5")
    build_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=300, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = UMT5EncoderModel(config).eval()
    model.save_pretrained(root / "text_encoder")
    hf = model.state_dict()
    wan = {"token_embedding.weight": hf["shared.weight"], "norm.weight": hf["encoder.final_layer_norm.weight"]}
    for i in range(2):
        wan |= {f"blocks.{i}.{w}": hf[f"encoder.block.{i}.{h}"] for h, w in WAN_NAMES.items()}
    torch.save(wan, root / "models_t5_umt5-xxl-enc-bf16.pth")
    return root


@pytest.mark.parametrize("precision", ["fp8_e4m3fn", "nf4"])
def test_umt5_quantised_modes(tiny_umt5, precision):
    from alice_core.loading.text_encoders import load_umt5

    prompts = ["a cat sits on the red mat", "waves crash on a rocky beach at sunset"]
    reference = load_umt5(tiny_umt5, precision="fp32").encode(prompts)
    for source in (tiny_umt5, tiny_umt5 / "models_t5_umt5-xxl-enc-bf16.pth"):
        enc = load_umt5(source, tokenizer_path=tiny_umt5 / "tokenizer", precision=precision)
        ffn = enc.model.encoder.block[0].layer[1].DenseReluDense
        assert quant.is_quantized_linear(enc.model.encoder.block[0].layer[0].SelfAttention.q)
        assert quant.is_quantized_linear(ffn.wi_0)
        assert not quant.is_quantized_linear(ffn.wo) and ffn.wo.weight.dtype == torch.bfloat16  # wo kept in bf16
        out = enc.encode(prompts)
        assert out.shape == reference.shape
        assert torch.equal(out.abs().sum(-1) == 0, reference.abs().sum(-1) == 0)  # same zero padding
        assert 0 < rel_err(out, reference) < 0.15


def test_umt5_weights_that_do_not_fit_are_named(tiny_umt5, tmp_path):
    from alice_core.loading.text_encoders import load_umt5

    wan = torch.load(tiny_umt5 / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    wan["blocks.1.attn.q.weight"] = torch.zeros(3, 64)
    bad = tmp_path / "enc.pth"
    torch.save(wan, bad)
    with pytest.raises(AliceError, match=r"shape mismatches.*encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight"):
        load_umt5(bad, tokenizer_path=tiny_umt5 / "tokenizer", precision="fp8_e5m2")
