"""Image-to-video and per-token-timestep WanDiT against diffusers' WanTransformer3DModel on random weights.

Wan2.1 I2V: in_dim 36 (noise 16 + mask 4 + image latent 16) and a CLIP embedding through img_emb and the
k_img/v_img cross-attention. Wan2.2 I2V: in_dim 36, no CLIP. TI2V-5B: one timestep per token.
"""

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.loading.dit import build_dit
from alice_core.loading.dit_keys import diffusers_key_from_official, infer_dit_config
from alice_core.loading.formats import detect_format
from alice_core.models.config import WanDiTConfig
from tests.test_dit_parity import official_key, rel_err, tiny_diffusers_model

# diffusers splits image tokens from text by assuming 512 text tokens, so these tests use Wan's real text_len.
TEXT_LEN = 512
IMAGE_DIM = 40


def i2v_reference(clip: bool, seed: int = 0):
    extra = dict(in_channels=36, out_channels=16)
    if clip:
        extra.update(image_dim=IMAGE_DIM, added_kv_proj_dim=48)
    return tiny_diffusers_model(seed, **extra)


def i2v_inputs(clip: bool):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 3, 8, 12, generator=g)
    y = torch.randn(2, 20, 3, 8, 12, generator=g)
    t = torch.tensor([995.0, 609.0])
    ctx = torch.randn(2, 9, 32, generator=g)
    image = torch.randn(2, 5, IMAGE_DIM, generator=g) if clip else None
    return x, y, t, ctx, image


def run_diffusers(model, x, y, t, ctx, image):
    padded = torch.nn.functional.pad(ctx, (0, 0, 0, TEXT_LEN - ctx.shape[1]))
    with torch.no_grad():
        return model(
            hidden_states=torch.cat([x, y], dim=1), timestep=t, encoder_hidden_states=padded,
            encoder_hidden_states_image=image, return_dict=False,
        )[0]


def i2v_config(clip: bool) -> WanDiTConfig:
    return WanDiTConfig(
        dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, text_len=TEXT_LEN, in_dim=36,
        image_dim=IMAGE_DIM if clip else None,
    )


@pytest.mark.parametrize("clip", [True, False], ids=["wan2.1-i2v", "wan2.2-i2v"])
def test_i2v_parity_diffusers_and_official_layouts(clip):
    ref_model = i2v_reference(clip)
    x, y, t, ctx, image = i2v_inputs(clip)
    ref = run_diffusers(ref_model, x, y, t, ctx, image)
    state = ref_model.state_dict()
    official = {official_key(k): v for k, v in state.items()}
    cfg = i2v_config(clip)
    assert detect_format(state, config=cfg).layout == "diffusers" and detect_format(official, config=cfg).layout == "official"
    # the architecture (in_dim 36, CLIP width) comes from the shapes alone
    inferred = infer_dit_config(official, num_heads=2, text_len=TEXT_LEN)
    assert (inferred.in_dim, inferred.out_dim, inferred.image_dim) == (36, 16, IMAGE_DIM if clip else None)
    for layout in (state, official):
        with torch.no_grad():
            out = build_dit(layout, i2v_config(clip))(x, t, ctx, y=y, clip_embedding=image)
        assert out.shape == x.shape
        assert rel_err(out, ref) < 1e-5
    # the official -> diffusers names used to write diffusers folders are the inverse map
    assert {diffusers_key_from_official(k) for k in official} == set(state)


def test_clip_tokens_change_the_output():
    """The image branch is live: other CLIP tokens give another velocity (and the same one in diffusers)."""
    ref_model = i2v_reference(clip=True, seed=4)
    model = build_dit(ref_model.state_dict(), i2v_config(True))
    x, y, t, ctx, image = i2v_inputs(True)
    other = torch.randn(image.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = model(x, t, ctx, y=y, clip_embedding=image), model(x, t, ctx, y=y, clip_embedding=other)
    assert rel_err(a, b) > 1e-3
    assert rel_err(b, run_diffusers(ref_model, x, y, t, ctx, other)) < 1e-5


def test_per_token_timesteps_match_diffusers():
    """TI2V: a [B, L] timestep (first latent frame at t = 0, the rest noisy), as diffusers' expand_timesteps does."""
    ref_model = tiny_diffusers_model(seed=6, in_channels=12, out_channels=12)
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, 12, 3, 8, 12, generator=g), torch.randn(1, 7, 32, generator=g)
    per_frame = torch.tensor([0.0, 870.0, 870.0])
    t = per_frame[:, None].expand(3, 4 * 6).reshape(1, -1)  # one per token of the (3, 4, 6) grid
    padded = torch.nn.functional.pad(ctx, (0, 0, 0, 24 - ctx.shape[1]))
    with torch.no_grad():
        ref = ref_model(hidden_states=x, timestep=t, encoder_hidden_states=padded, return_dict=False)[0]
        cfg = WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, text_len=24, in_dim=12, out_dim=12)
        model = build_dit(ref_model.state_dict(), cfg)
        out = model(x, t, ctx)
        # one time per sample equals the same time given to every token
        same = model(x, torch.full((1,), 870.0), ctx)
        same_tokens = model(x, torch.full((1, 72), 870.0), ctx)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(same_tokens, same) < 1e-6


def test_image_inputs_are_checked():
    clip_model = build_dit(i2v_reference(clip=True).state_dict(), i2v_config(True))
    plain = build_dit(i2v_reference(clip=False).state_dict(), i2v_config(False))
    t2v = build_dit(tiny_diffusers_model().state_dict(), WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, text_len=24))
    x, y, t, ctx, image = i2v_inputs(True)
    with pytest.raises(AliceError, match="image-to-video model.*start image"):
        plain(x, t, ctx)
    with pytest.raises(AliceError, match="CLIP image embedding"):
        clip_model(x, t, ctx, y=y)
    with pytest.raises(AliceError, match="text-to-video model.*drop the start image"):
        t2v(x, t, ctx, y=y)
    with pytest.raises(AliceError, match="no image embedding layers"):
        plain(x, t, ctx, y=y, clip_embedding=image)
    with pytest.raises(AliceError, match=r"y must be \[B, 20, 3, 8, 12\]"):
        plain(x, t, ctx, y=y[:, :16])
