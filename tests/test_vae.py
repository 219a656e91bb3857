"""WanVAE against diffusers' AutoencoderKLWan on the same random weights; checkpoint layouts and files; input checks;
tiled decoding."""

import re

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.loading.vae import (
    detect_vae_layout,
    infer_vae_config,
    load_wan_vae,
    vae_diffusers_to_official,
    vae_official_to_diffusers,
)
from alice_core.models.config import WanVAEConfig
from alice_core.models.interfaces import VideoAutoencoder
from alice_core.models.vae import WanVAE

TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
TINY_CONFIG = WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
# fp32 parity with diffusers: max abs error (measured ~4e-7 for encode, ~4e-6 for decode).
PARITY_ATOL = 1e-4
# Tiled vs untiled decode, mean abs error on [-1, 1] video with random weights: measured 0.005-0.009 over 3 weight
# and 2 latent seeds for one latent frame at 32x32, tiles 24, overlap 16 (two frames: ~0.017; diffusers' own
# tiling on the same weights and tiles: ~0.025). Not exact: the mid-block attention is global per frame and the
# convolutions see ~10 latent pixels around each output, which a tile border cuts off.
TILED_MEAN_ATOL = 0.015


def official_key(key: str, num_res_blocks: int) -> str:
    """Independent diffusers -> official Wan2.1 key map (regex rules written here, not alice_core's converter)."""
    per_stage = num_res_blocks + 2  # decoder stage: num_res_blocks + 1 residual blocks, then an up-sampler

    def up_block(m: re.Match) -> str:
        stage, kind, j = int(m[1]), m[2], int(m[3])
        return f"decoder.upsamples.{stage * per_stage + (j if kind == 'resnets' else num_res_blocks + 1)}."

    rules = [
        # inside residual blocks first (diffusers uses conv1/conv2 only there)
        (r"\.norm1\.gamma$", ".residual.0.gamma"),
        (r"\.conv1\.(weight|bias)$", r".residual.2.\1"),
        (r"\.norm2\.gamma$", ".residual.3.gamma"),
        (r"\.conv2\.(weight|bias)$", r".residual.6.\1"),
        (r"\.conv_shortcut\.", ".shortcut."),
        (r"^quant_conv\.", "conv1."),
        (r"^post_quant_conv\.", "conv2."),
        (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
        (r"^(encoder|decoder)\.norm_out\.", r"\1.head.0."),
        (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.middle.0."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.middle.2."),
        (r"^encoder\.down_blocks\.", "encoder.downsamples."),
        (r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.", up_block),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere, scaled so activations stay O(1) and most decoded pixels stay inside [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def reference() -> AutoencoderKLWan:
    model = AutoencoderKLWan(**TINY).eval()
    randomise(model, seed=1)
    return model


@pytest.fixture(scope="module")
def official_state(reference):
    return {official_key(k, TINY["num_res_blocks"]): v.clone() for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def vae(official_state) -> WanVAE:
    return load_wan_vae(official_state)


def latent_stats(reference):
    shape = (1, reference.config.z_dim, 1, 1, 1)
    mean = torch.tensor(reference.config.latents_mean).view(shape)
    std = torch.tensor(reference.config.latents_std).view(shape)
    return mean, std


def test_protocol_and_inferred_config(vae):
    assert isinstance(vae, VideoAutoencoder)
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (16, 4, 8)
    assert vae.config == TINY_CONFIG
    assert not any(p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_matches_diffusers(vae, reference, frames):
    video = torch.rand(1, 3, frames, 32, 32) * 2 - 1
    mean, std = latent_stats(reference)
    with torch.no_grad():
        ours = vae.encode(video)
        expected = (reference.encode(video).latent_dist.mean - mean) / std
    assert ours.shape == (1, 16, 1 + (frames - 1) // 4, 4, 4)
    assert (ours - expected).abs().max() < PARITY_ATOL


def test_decode_matches_diffusers(vae, reference):
    latent = torch.randn(1, 16, 3, 4, 4)
    mean, std = latent_stats(reference)
    with torch.no_grad():
        ours = vae.decode(latent)
        expected = reference.decode(latent * std + mean).sample
    assert ours.shape == (1, 3, 9, 32, 32)
    assert (ours - expected).abs().max() < PARITY_ATOL
    assert (ours.abs() < 1).float().mean() > 0.7, "most pixels must be unclamped for the comparison to mean much"


def test_layout_conversions_agree_with_independent_map(reference, official_state):
    diffusers_state = reference.state_dict()
    assert detect_vae_layout(diffusers_state) == "diffusers"
    assert detect_vae_layout(official_state) == "official"
    converted = vae_diffusers_to_official(diffusers_state)
    assert converted.keys() == official_state.keys()
    assert all(converted[k] is diffusers_state[d] for d, k in ((d, official_key(d, 1)) for d in diffusers_state))
    assert vae_official_to_diffusers(official_state).keys() == diffusers_state.keys()


def test_diffusers_layout_loads_to_the_same_model(vae, reference):
    latent = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(load_wan_vae(reference.state_dict()).decode(latent), vae.decode(latent))


def test_default_architecture_matches_diffusers_structurally():
    """Wan2.1's real size (base_dim 96), built on the meta device: same keys and shapes as diffusers' default."""
    with torch.device("meta"):
        ours = WanVAE.from_config(WanVAEConfig()).state_dict()
        theirs = AutoencoderKLWan().state_dict()
    expected = {official_key(k, 2): tuple(v.shape) for k, v in theirs.items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in theirs.values()) == 126_892_531
    assert infer_vae_config(ours) == WanVAEConfig()
    assert vae_diffusers_to_official(theirs).keys() == ours.keys()


def test_checkpoint_files(tmp_path, vae, reference, official_state):
    latent = torch.randn(1, 16, 1, 4, 4)
    with torch.no_grad():
        expected = vae.decode(latent)
    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save(official_state, pth)
    st = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(st))
    for path in (pth, str(st)):
        with torch.no_grad():
            assert torch.equal(load_wan_vae(path).decode(latent), expected)
    half = load_wan_vae(pth, dtype=torch.bfloat16)
    with torch.no_grad():
        decoded = half.decode(latent.bfloat16())
    assert half.dtype == decoded.dtype == torch.bfloat16
    assert (decoded.float() - expected).abs().mean() < 0.05  # bf16 rounding only (measured ~0.01)


class Opaque:
    """An arbitrary object: unpickling it needs code execution, which weights_only loading refuses."""


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "vae.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Opaque()}, path)
    with pytest.raises(AliceError, match="not a plain state dict"):
        load_wan_vae(path)


def test_bad_state_dicts_name_the_key_and_shapes(official_state, reference):
    wrong = dict(official_state)
    wrong["decoder.head.2.weight"] = torch.zeros(3, 4, 3, 3, 3)
    message = "decoder.head.2.weight: expected shape (3, 8, 3, 3, 3), found (3, 4, 3, 3, 3)"
    with pytest.raises(AliceError, match=re.escape(message)):
        load_wan_vae(wrong)

    missing = dict(official_state)
    del missing["decoder.middle.1.proj.bias"]
    with pytest.raises(AliceError, match=re.escape("missing keys: decoder.middle.1.proj.bias (expected shape (16,))")):
        load_wan_vae(missing, config=TINY_CONFIG)

    extra = {**official_state, "decoder.extra.weight": torch.zeros(2)}
    with pytest.raises(AliceError, match=re.escape("unexpected keys: decoder.extra.weight")):
        load_wan_vae(extra)

    # a diffusers-layout file: the error names the key as that file spells it
    diffusers_state = dict(reference.state_dict())
    diffusers_state["decoder.conv_out.weight"] = torch.zeros(3, 4, 3, 3, 3)
    with pytest.raises(AliceError, match=re.escape("decoder.conv_out.weight: expected shape (3, 8, 3, 3, 3)")):
        load_wan_vae(diffusers_state)

    with pytest.raises(AliceError, match="not a Wan VAE checkpoint"):
        load_wan_vae({"blocks.0.weight": torch.zeros(1)})


def test_input_validation(vae):
    with pytest.raises(AliceError, match=re.escape("must be 1 + 4k") + ".*use 1 or 5 frames"):
        vae.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(AliceError, match="multiples of 8; use e.g. 24x32"):
        vae.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(AliceError, match=re.escape("[B, 3, F, H, W]")):
        vae.encode(torch.zeros(1, 4, 5, 32, 32))
    with pytest.raises(AliceError, match=re.escape("[B, 16, f, h, w]")):
        vae.decode(torch.zeros(1, 8, 2, 4, 4))
    with pytest.raises(AliceError, match="overlap_latent < tile_latent"):
        vae.decode(torch.zeros(1, 16, 1, 4, 4), tiled=True, tile_latent=4, overlap_latent=4)


def test_tiled_blending_is_exact_for_a_local_decoder(vae, monkeypatch):
    """With a stand-in decoder whose output pixels depend only on their own latent pixel, tiling must be exact:
    this checks the tile offsets and that the cross-fade weights sum to one. Tiles go through one at a time."""
    seen = []

    def local_decode(z):
        seen.append(tuple(z.shape[-2:]))
        video = F.interpolate(z[:, :3], scale_factor=(1, 8, 8)).repeat_interleave(4, dim=2)
        return video[:, :, 3:]  # 1 + 4 (f - 1) frames, like the real decoder

    monkeypatch.setattr(vae, "_decode", local_decode)
    latent = torch.randn(1, 16, 2, 20, 28) * 0.3
    full = vae.decode(latent)
    seen.clear()
    tiled = vae.decode(latent, tiled=True, tile_latent=8, overlap_latent=3)
    assert (tiled - full).abs().max() < 1e-5
    assert seen == [(8, 8)] * (len(seen)) and len(seen) == 4 * 5  # 20 -> offsets 0,5,10,12; 28 -> 0,5,10,15,20


def test_tiled_decode_close_to_untiled(vae):
    latent = torch.randn(1, 16, 1, 32, 32)
    with torch.no_grad():
        full = vae.decode(latent)
        tiled = vae.decode(latent, tiled=True, tile_latent=24, overlap_latent=16)
    assert tiled.shape == full.shape == (1, 3, 1, 256, 256)
    assert (tiled - full).abs().mean() < TILED_MEAN_ATOL
