"""bf16 inference on a CPU runs each plain Linear as one oneDNN call with its bias (and the FFN's GELU) fused in:
held to diffusers' WanTransformer3DModel and to the same layers run one by one; a hooked layer (LoRA), autograd and
torch.func.jvp take the unfused path. Without autograd RMSNorm skips F.rms_norm's float32 temporaries: held to
diffusers' RMSNorm."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alice_core.loading.dit import build_dit
from alice_core.models import ops
from alice_core.models.attention import math_attention
from tests.test_dit_parity import CFG, diffusers_reference, inputs, rel_err, tiny_diffusers_model

pytestmark = pytest.mark.skipif(not ops._onednn_supports(torch.bfloat16), reason="oneDNN has no native bf16 here")


class OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func.overloadpacket), tuple(a for a in args if isinstance(a, str))))
        return func(*args, **(kwargs or {}))


def bf16_pair(seed: int = 0):
    ref = tiny_diffusers_model(seed=seed)
    ours = build_dit(ref.state_dict(), CFG).to(torch.bfloat16)
    return ref, ours


def unfused(model, *args):
    """The same forward with every layer run one by one (grad mode on is what turns the fused path off)."""
    with torch.enable_grad():
        return model(*args).detach()


def test_fused_forward_matches_diffusers_and_the_unfused_layers():
    ref, ours = bf16_pair()
    x, t, ctx = inputs()
    exact = diffusers_reference(ref, x, t, ctx)  # float32
    bf16_ref = diffusers_reference(ref.to(torch.bfloat16), x.bfloat16(), t, ctx.bfloat16()).float()
    with torch.no_grad(), OpNames() as trace:
        fused = ours(x.bfloat16(), t, ctx.bfloat16()).float()
    names = [name for name, _ in trace.calls]
    # every block's FFN and the text embedding ran their GELU inside the GEMM, every Linear its bias
    assert trace.calls.count(("mkldnn._linear_pointwise", ("gelu", "tanh"))) == CFG.num_layers + 1
    assert not {"aten.gelu", "aten.addmm", "aten.linear", "aten.mm"} & set(names)
    plain = unfused(ours, x.bfloat16(), t, ctx.bfloat16()).float()
    # bf16 rounding only: as close to the float32 result as diffusers' own bf16 run (and the unfused layers') is
    assert rel_err(fused, exact) < 1.25 * max(rel_err(bf16_ref, exact), rel_err(plain, exact))
    assert rel_err(fused, plain) < 0.03


def test_a_hooked_layer_runs_unfused():
    """A forward hook (how LoRA adapters attach) sees ffn.0's output before the GELU, as without fusing."""
    _, ours = bf16_pair(seed=1)
    x, t, ctx = (v.bfloat16() if v.is_floating_point() and v.ndim > 1 else v for v in inputs())
    fc1 = ours.blocks[0].ffn[0]
    handle = fc1.register_forward_hook(lambda module, args, out: out + 2.0)
    try:
        with torch.no_grad():
            hooked = ours(x, t, ctx).float()
        plain_hooked = unfused(ours, x, t, ctx).float()
    finally:
        handle.remove()
    with torch.no_grad():
        no_hook = ours(x, t, ctx).float()
    assert rel_err(hooked, plain_hooked) < 0.03
    assert rel_err(hooked, no_hook) > 0.1


def test_jvp_under_no_grad_takes_the_unfused_path():
    """rCM's trainer takes torch.func.jvp inside no_grad: the fused op has no derivative, so it must not run."""
    _, ours = bf16_pair(seed=2)
    x, t, ctx = inputs()
    x, ctx = x.bfloat16(), ctx.bfloat16()
    ours.requires_grad_(False)
    with torch.no_grad(), math_attention():
        out, tangent = torch.func.jvp(lambda v: ours(v, t, ctx), (x,), (torch.ones_like(x),))
    with math_attention():
        assert torch.equal(out, unfused(ours, x, t, ctx))
    model32 = ours.float()  # the same (bf16-valued) weights: its float32 tangent is the reference
    with torch.no_grad(), math_attention():
        _, tangent32 = torch.func.jvp(lambda v: model32(v, t, ctx.float()), (x.float(),), (torch.ones_like(x.float()),))
    assert rel_err(tangent.float(), tangent32) < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_inference_path_matches_diffusers(dtype):
    """Without autograd RMSNorm writes x * rsqrt(mean(x^2) + eps) into x's dtype, then scales by the weight in place:
    diffusers' RMSNorm rounds the same way."""
    from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm

    torch.manual_seed(0)
    ours, ref = ops.RMSNorm(1536, eps=1e-6), DiffusersRMSNorm(1536, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(1536))
        ref.weight.copy_(ours.weight)
    ours, ref = ours.to(dtype), ref.to(dtype)
    x = (torch.randn(1, 512, 1536) * 3).to(dtype)
    with torch.no_grad():
        got, expected = ours(x), ref(x)
    assert got.dtype == dtype
    if dtype == torch.float32:
        assert rel_err(got, expected) < 1e-6
    else:  # the same two roundings: at most one bf16 step apart (the sums of squares differ in their last bits)
        assert (got.float() - expected.float()).abs().max().item() <= torch.finfo(dtype).eps * expected.abs().max().item()
    assert rel_err(ours(x).float(), expected.float()) < (1e-6 if dtype == torch.float32 else 1e-2)  # autograd path

