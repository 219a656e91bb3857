"""Attention backends: every importable kernel agrees with explicit softmax(QK^T)V; missing or failing ones fall
back to SDPA with one logged line and the generation goes on."""

import builtins
import logging

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.models.attention import (
    ATTENTION_BACKENDS,
    AttentionBackend,
    available_attention_backends,
    math_attention,
)
from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT

# fp32 on CPU: SDPA's fused kernels and the explicit product differ only by summation order.
FP32_TOLERANCE = 1e-5
# flash / sage run in half precision on a GPU (sage quantises q, k to int8): their usual error against fp32 math.
HALF_TOLERANCE = 3e-2


def reference_attention(q, k, v):
    """Independent oracle: per-head loops of softmax(q k^T / sqrt(d)) v in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            scores = q[b, :, h] @ k[b, :, h].T / q.shape[-1] ** 0.5
            out[b, :, h] = torch.softmax(scores, dim=-1) @ v[b, :, h]
    return out.flatten(2)


def qkv(device="cpu", dtype=torch.float32, lq=37, lk=29):
    g = torch.Generator().manual_seed(1)
    shape = lambda n: (2, n, 3, 16)  # noqa: E731
    return [torch.randn(shape(n), generator=g).to(device, dtype) for n in (lq, lk, lk)]


def test_sdpa_and_math_agree_with_the_reference():
    q, k, v = qkv()
    expected = reference_attention(q, k, v)
    backend = AttentionBackend("sdpa")
    assert (backend(q, k, v).double() - expected).abs().max() < FP32_TOLERANCE
    with math_attention():
        assert (backend(q, k, v).double() - expected).abs().max() < FP32_TOLERANCE


@pytest.mark.parametrize("name", [n for n in available_attention_backends() if n != "sdpa"])
def test_installed_gpu_kernels_agree_with_math(name):
    if not torch.cuda.is_available():
        pytest.skip(f"{name} is installed but runs only on a CUDA GPU")
    q, k, v = qkv("cuda", torch.bfloat16, lq=256, lk=256)
    backend = AttentionBackend(name)
    out = backend(q, k, v)
    assert backend.name == name, "the kernel failed and fell back"
    assert (out.double().cpu() - reference_attention(q.cpu(), k.cpu(), v.cpu())).abs().max() < HALF_TOLERANCE


@pytest.mark.parametrize("name", ["flash", "sage"])
def test_missing_package_falls_back_to_sdpa_with_one_line(name, monkeypatch, caplog):
    real_import = builtins.__import__
    blocked = {"flash": "flash_attn", "sage": "sageattention"}[name]

    def no_package(module, *args, **kwargs):
        if module.split(".")[0] == blocked:
            raise ModuleNotFoundError(f"No module named '{blocked}'", name=blocked)
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with caplog.at_level(logging.WARNING):
        backend = AttentionBackend(name)
    assert backend.name == "sdpa" and backend.requested == name
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and name in lines[0] and "sdpa" in lines[0] and blocked in lines[0]
    q, k, v = qkv()
    assert (backend(q, k, v).double() - reference_attention(q, k, v)).abs().max() < FP32_TOLERANCE


def test_a_package_broken_at_import_falls_back_to_sdpa_with_one_line(monkeypatch, caplog):
    # e.g. sageattention 1.x against a newer Triton: the import itself raises something other than ImportError
    real_import = builtins.__import__

    def broken(module, *args, **kwargs):
        if module.split(".")[0] == "sageattention":
            raise AttributeError("module 'triton.language' has no attribute 'fake'\nsecond line")
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with caplog.at_level(logging.WARNING):
        backend = AttentionBackend("sage")
        assert "sage" not in available_attention_backends()
    assert backend.name == "sdpa"
    assert [r.getMessage() for r in caplog.records] == [
        "attention backend 'sage' could not be loaded (AttributeError: module 'triton.language' has no attribute "
        "'fake'); using sdpa"
    ]
    q, k, v = qkv()
    assert (backend(q, k, v).double() - reference_attention(q, k, v)).abs().max() < FP32_TOLERANCE


def test_a_kernel_failing_at_run_time_falls_back_once(caplog):
    calls = []

    def cuda_only_kernel(q, k, v):
        calls.append(1)
        raise RuntimeError("FlashAttention only supports CUDA tensors\nsecond line")

    backend = AttentionBackend("flash", kernel=cuda_only_kernel)
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING):
        first, second = backend(q, k, v), backend(q, k, v)
    assert len(calls) == 1, "a failed kernel must not be retried every call"
    assert backend.name == "sdpa"
    assert [r.getMessage() for r in caplog.records] == [
        "attention backend 'flash' failed (RuntimeError: FlashAttention only supports CUDA tensors); using sdpa"
    ]
    expected = reference_attention(q, k, v)
    assert (first.double() - expected).abs().max() < FP32_TOLERANCE and torch.equal(first, second)


def test_unknown_backend_is_an_error_naming_the_choices():
    with pytest.raises(AliceError, match="sdpa, flash, sage"):
        AttentionBackend("xformers")


def test_dit_backend_is_injected_and_switchable():
    cfg = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=8)
    model = WanDiT(cfg).eval()
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 16)
    with torch.no_grad():
        sdpa_out = model(x, t, ctx)
        with math_attention():
            math_out = model(x, t, ctx)
        backend = model.set_attention("sage")  # not installed on CPU machines: falls back, one line
        fallback_out = model(x, t, ctx)
    assert backend.name in ATTENTION_BACKENDS
    assert all(b.self_attn.attention is backend and b.cross_attn.attention is backend for b in model.blocks)
    assert (sdpa_out - math_out).abs().max() < FP32_TOLERANCE
    if backend.name == "sdpa":
        assert torch.equal(fallback_out, sdpa_out)
