"""Block swap: the same output as the model fully on the device, with at most K blocks holding a device copy."""

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.models.block_swap import BlockSwap
from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT

CFG = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=6, text_dim=16, text_len=8)


def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([700.0]), torch.randn(1, 5, 16, generator=g)


def on_device_count(model, swap):
    """Blocks whose weights are not the CPU masters right now, read from the parameters themselves."""
    master_ptrs = {t.data_ptr() for ts in swap.masters.values() for t in ts}
    return sum(
        any(p.data_ptr() not in master_ptrs for p in block.parameters()) for block in model.blocks
    )


@pytest.mark.parametrize("k", [6, 4, 2, 1])
def test_swapped_forward_is_identical_and_keeps_at_most_k_blocks(k):
    torch.manual_seed(0)
    model = WanDiT(CFG).eval()
    x, t, ctx = inputs()
    with torch.inference_mode():  # as ComfyUI runs it
        expected = model(x, t, ctx)
    swap = BlockSwap(model, blocks_on_device=k, device="cpu")
    counts = []
    watchers = [b.register_forward_pre_hook(lambda m, a: counts.append(on_device_count(model, swap)))
                for b in model.blocks]
    with torch.inference_mode():
        first, second = model(x, t, ctx), model(x, t, ctx)
    for w in watchers:
        w.remove()
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(counts) == 2 * CFG.num_layers and max(counts) <= k
    assert swap.peak_resident <= k
    if k < CFG.num_layers:
        assert max(counts) == k  # the stream window is really used
        # Between forwards only the fixed blocks hold a device copy.
        assert on_device_count(model, swap) == len(swap.fixed) == max(k - 2, 0)
    swap.remove()
    with torch.inference_mode():
        assert torch.equal(model(x, t, ctx), expected)


def test_a_model_loaded_in_inference_mode_swaps_too():
    # ComfyUI runs its loader nodes under inference_mode: the parameters are inference tensors
    torch.manual_seed(0)
    with torch.inference_mode():
        model = WanDiT(CFG).eval().requires_grad_(False)
    x, t, ctx = inputs()
    with torch.inference_mode():
        expected = model(x, t, ctx)
        swap = BlockSwap(model, blocks_on_device=1, device="cpu")
        assert torch.equal(model(x, t, ctx), expected) and swap.peak_resident == 1


def test_k_out_of_range_names_the_limit():
    with pytest.raises(AliceError, match="between 1 and the model's 6 blocks"):
        BlockSwap(WanDiT(CFG), blocks_on_device=0, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the overlapped copy stream needs a CUDA GPU")
def test_cuda_swap_matches_and_bounds_memory():
    torch.manual_seed(0)
    model = WanDiT(CFG).eval().to(torch.bfloat16)
    x, t, ctx = (v.cuda() for v in inputs())
    with torch.inference_mode():
        expected = model.cuda()(x, t, ctx)
    model.cpu()
    swap = BlockSwap(model, blocks_on_device=2, device="cuda")
    with torch.inference_mode():
        out = model(x, t, ctx)
    assert torch.equal(out, expected) and swap.peak_resident <= 2
