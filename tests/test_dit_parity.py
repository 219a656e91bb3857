"""WanDiT against diffusers' WanTransformer3DModel on the same random weights."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from alice_core.errors import AliceError
from alice_core.loading.dit import build_dit
from alice_core.loading.dit_keys import infer_dit_config
from alice_core.loading.formats import detect_format
from alice_core.models.config import DIT_PRESETS, WanDiTConfig, dit_preset
from alice_core.models.dit import WanDiT

TEXT_LEN = 24


def tiny_diffusers_model(seed: int = 0, **extra) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    kwargs = dict(
        num_layers=2, num_attention_heads=2, attention_head_dim=24, ffn_dim=64, text_dim=32,
        in_channels=16, out_channels=16, freq_dim=256, patch_size=(1, 2, 2), rope_max_seq_len=64,
    )
    model = WanTransformer3DModel(**{**kwargs, **extra})
    # Non-trivial values everywhere (diffusers zero-inits some tables), so parity is a real check.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def official_key(diffusers_key: str) -> str:
    """Independent map diffusers -> official Wan names (written here, not imported from alice_core)."""
    k = diffusers_key
    top = {
        "scale_shift_table": "head.modulation",
        "proj_out.weight": "head.head.weight",
        "proj_out.bias": "head.head.bias",
    }
    if k in top:
        return top[k]
    image = {
        "condition_embedder.image_embedder.norm1.": "img_emb.proj.0.",
        "condition_embedder.image_embedder.ff.net.0.proj.": "img_emb.proj.1.",
        "condition_embedder.image_embedder.ff.net.2.": "img_emb.proj.3.",
        "condition_embedder.image_embedder.norm2.": "img_emb.proj.4.",
    }
    for a, b in image.items():
        if k.startswith(a):
            return b + k[len(a):]
    for a, b in [
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
        ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
    ]:
        if k.startswith(a):
            return b + k[len(a):]
    if not k.startswith("blocks."):
        return k
    _, idx, rest = k.split(".", 2)
    table = {
        "scale_shift_table": "modulation",
        "attn1.to_q.": "self_attn.q.", "attn1.to_k.": "self_attn.k.", "attn1.to_v.": "self_attn.v.",
        "attn1.to_out.0.": "self_attn.o.", "attn1.norm_q.": "self_attn.norm_q.", "attn1.norm_k.": "self_attn.norm_k.",
        "attn2.to_q.": "cross_attn.q.", "attn2.to_k.": "cross_attn.k.", "attn2.to_v.": "cross_attn.v.",
        "attn2.to_out.0.": "cross_attn.o.", "attn2.norm_q.": "cross_attn.norm_q.", "attn2.norm_k.": "cross_attn.norm_k.",
        "attn2.add_k_proj.": "cross_attn.k_img.", "attn2.add_v_proj.": "cross_attn.v_img.",
        "attn2.norm_added_k.": "cross_attn.norm_k_img.",
        "norm2.": "norm3.", "ffn.net.0.proj.": "ffn.0.", "ffn.net.2.": "ffn.2.",
    }
    for a, b in table.items():
        if rest.startswith(a):
            return f"blocks.{idx}.{b}{rest[len(a):]}"
    raise AssertionError(f"unmapped key {k}")


def inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 3, 8, 12, generator=g)
    t = torch.tensor([937.5, 12.0][:batch])
    ctx = torch.randn(batch, 7, 32, generator=g)
    return x, t, ctx


def diffusers_reference(model, x, t, ctx):
    padded = torch.nn.functional.pad(ctx, (0, 0, 0, TEXT_LEN - ctx.shape[1]))  # Wan zero-pads text to text_len
    with torch.no_grad():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=padded, return_dict=False)[0]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


CFG = WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, text_len=TEXT_LEN)


def test_parity_from_diffusers_layout():
    ref_model = tiny_diffusers_model()
    state = ref_model.state_dict()
    assert detect_format(state, config=CFG).layout == "diffusers"
    ours = build_dit(state, CFG)
    x, t, ctx = inputs()
    with torch.no_grad():
        out = ours(x, t, ctx)
    ref = diffusers_reference(ref_model, x, t, ctx)
    assert out.shape == x.shape
    assert rel_err(out, ref) < 1e-5


def test_parity_from_official_and_rcm_layouts():
    ref_model = tiny_diffusers_model(seed=3)
    official = {official_key(k): v for k, v in ref_model.state_dict().items()}
    assert detect_format(official, config=CFG).layout == "official"
    x, t, ctx = inputs()
    ref = diffusers_reference(ref_model, x, t, ctx)
    with torch.no_grad():
        out = build_dit(official, CFG)(x, t, ctx)
    assert rel_err(out, ref) < 1e-5

    # rCM .pt: `net.` prefix and the patch embedding stored as a Linear weight [dim, in*1*2*2].
    rcm = {f"net.{k}": v for k, v in official.items()}
    rcm["net.patch_embedding.weight"] = official["patch_embedding.weight"].reshape(48, 64)
    assert detect_format(rcm, config=CFG).layout == "rcm"
    with torch.no_grad():
        out_rcm = build_dit(rcm, CFG)(x, t, ctx)
    assert rel_err(out_rcm, ref) < 1e-5


def test_only_difference_is_time_embedding_precision(monkeypatch):
    """Wan computes the sinusoidal timestep embedding in float64, diffusers in float32. With that one step done
    in float32 the two models agree to float rounding: the rest of the network is the same computation."""
    import alice_core.models.dit as dit

    def float32_sinusoid(dim, position):
        half = dim // 2
        freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
        angles = position.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)

    ref_model = tiny_diffusers_model(seed=5)
    x, t, ctx = inputs()
    ref = diffusers_reference(ref_model, x, t, ctx)
    monkeypatch.setattr(dit, "sinusoidal_embedding", float32_sinusoid)
    with torch.no_grad():
        out = build_dit(ref_model.state_dict(), CFG)(x, t, ctx)
    assert rel_err(out, ref) < 1e-6


def test_architecture_inferred_from_shapes():
    state = WanDiT(WanDiTConfig(dim=256, ffn_dim=96, num_heads=2, num_layers=3, text_dim=40, in_dim=12, out_dim=12)).state_dict()
    cfg = infer_dit_config(state)
    assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.text_dim, cfg.in_dim, cfg.out_dim, cfg.num_heads) == (256, 96, 3, 40, 12, 12, 2)


def test_presets_match_published_sizes():
    sizes = {}
    for name in DIT_PRESETS:
        with torch.device("meta"):
            sizes[name] = sum(p.numel() for p in WanDiT(dit_preset(name)).parameters())
    assert 1.2e9 < sizes["wan2.1-t2v-1.3b"] < 1.5e9
    assert 13.5e9 < sizes["wan2.1-t2v-14b"] < 14.8e9
    assert 4.5e9 < sizes["wan2.2-ti2v-5b"] < 5.5e9
    with pytest.raises(AliceError, match="choose one of"):
        dit_preset("wan9")


def test_wrong_architecture_gives_clear_error():
    state = tiny_diffusers_model().state_dict()
    wrong = WanDiTConfig(dim=48, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=TEXT_LEN)
    with pytest.raises(AliceError, match=r"shape mismatches.*ffn\.0\.weight"):
        build_dit(state, wrong)
    with pytest.raises(AliceError, match="not a Wan DiT checkpoint"):
        build_dit({"encoder.conv1.weight": torch.zeros(1)})


def test_bad_inputs_are_named():
    model = build_dit(tiny_diffusers_model().state_dict(), CFG)
    x, t, ctx = inputs()
    with pytest.raises(AliceError, match="text_dim=32"):
        model(x, t, torch.randn(2, 7, 31))
    with pytest.raises(AliceError, match="divisible by the patch size"):
        model(torch.randn(2, 16, 3, 7, 8), t, ctx)
