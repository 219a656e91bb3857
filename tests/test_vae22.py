"""The Wan2.2 VAE (TI2V-5B: residual stages, 2x2 patchify, stride 4x16x16, 48 channels) against diffusers'
AutoencoderKLWan in its Wan2.2 configuration on the same small random weights: encode, decode, tiled decode;
official <-> diffusers key layouts; the z_dim-48 / z_dim-16 mix-up named."""

import re

import pytest
import torch

from diffusers import AutoencoderKLWan

from alice_core.errors import AliceError
from alice_core.loading.vae import detect_vae_layout, infer_vae_config, load_wan_vae, vae_official_to_diffusers
from alice_core.models.config import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, WAN22_VAE
from alice_core.models.vae import WanVAE
from tests.test_vae import PARITY_ATOL, randomise

RES = 1
TINY = dict(
    base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=RES,
    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_spatial=16, latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD),
)


def official_key(key: str) -> str:
    """Independent diffusers -> official Wan2.2 key map (written here from wan/modules/vae2_2.py's module tree)."""
    rules = [
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
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2."),
        (r"^encoder\.down_blocks\.(\d+)\.downsampler\.", rf"encoder.downsamples.\1.downsamples.{RES}."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2."),
        (r"^decoder\.up_blocks\.(\d+)\.upsampler\.", rf"decoder.upsamples.\1.upsamples.{RES + 1}."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


@pytest.fixture(scope="module")
def reference() -> AutoencoderKLWan:
    model = AutoencoderKLWan(**TINY).eval()
    randomise(model, seed=2)
    return model


@pytest.fixture(scope="module")
def vae(reference) -> WanVAE:
    return load_wan_vae({official_key(k): v.clone() for k, v in reference.state_dict().items()})


def stats():
    shape = (1, 48, 1, 1, 1)
    return torch.tensor(WAN22_LATENTS_MEAN).view(shape), torch.tensor(WAN22_LATENTS_STD).view(shape)


def test_architecture_from_the_keys(vae):
    cfg = vae.config
    assert (cfg.base_dim, cfg.decoder_base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (8, 12, 48, (1, 2, 2, 2), 1)
    assert (cfg.temporal_downsample, cfg.patch_size, cfg.residual) == ((False, True, True), 2, True)
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (48, 4, 16)
    assert cfg.latents_mean == WAN22_LATENTS_MEAN and len(cfg.latents_std) == 48
    assert (WAN22_VAE.spatial_stride, WAN22_VAE.temporal_stride) == (16, 4)


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_matches_diffusers(vae, reference, frames):
    video = torch.rand(1, 3, frames, 32, 64, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    mean, std = stats()
    with torch.no_grad():
        ours = vae.encode(video)
        expected = (reference.encode(video).latent_dist.mean - mean) / std
    assert ours.shape == (1, 48, 1 + (frames - 1) // 4, 2, 4)
    assert (ours - expected).abs().max() < PARITY_ATOL


def test_decode_matches_diffusers(vae, reference):
    latent = torch.randn(1, 48, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    mean, std = stats()
    with torch.no_grad():
        ours = vae.decode(latent)
        expected = reference.decode(latent * std + mean).sample
    assert ours.shape == (1, 3, 9, 32, 48)
    assert (ours - expected).abs().max() < PARITY_ATOL
    assert (ours.abs() < 1).float().mean() > 0.7, "most pixels must be unclamped for the comparison to mean much"


def test_tiled_decode_close_to_diffusers(vae, reference):
    """Tiled decode (tiles of 8 latent pixels, overlap 4) against diffusers' untiled and tiled decodes. Tiling is
    not exact (per-frame attention and the convolutions' reach cross tile borders); measured mean abs error vs the
    untiled decode: ours 0.075, diffusers' own tiling on the same tile size 0.088."""
    latent = torch.randn(1, 48, 2, 12, 12, generator=torch.Generator().manual_seed(1))
    mean, std = stats()
    with torch.no_grad():
        full = vae.decode(latent)
        tiled = vae.decode(latent, tiled=True, tile_latent=8, overlap_latent=4)
        expected = reference.decode(latent * std + mean).sample
        reference.enable_tiling(tile_sample_min_height=128, tile_sample_min_width=128,
                                tile_sample_stride_height=64, tile_sample_stride_width=64)
        try:
            expected_tiled = reference.decode(latent * std + mean).sample
        finally:
            reference.disable_tiling()
    assert tiled.shape == full.shape == (1, 3, 5, 192, 192)
    assert (full - expected).abs().max() < PARITY_ATOL
    ours_err = (tiled - expected).abs().mean().item()
    theirs_err = (expected_tiled - expected).abs().mean().item()
    assert 0 < ours_err < 0.1 and ours_err < 1.1 * theirs_err, (ours_err, theirs_err)


def test_layouts_round_trip(reference, vae):
    diffusers_state = reference.state_dict()
    assert detect_vae_layout(diffusers_state) == "diffusers"
    official = vae.state_dict()
    assert detect_vae_layout(official) == "official"
    assert set(vae_official_to_diffusers(official)) == set(diffusers_state)
    from_diffusers = load_wan_vae(diffusers_state)  # the diffusers layout loads to the same weights
    for k, v in from_diffusers.state_dict().items():
        assert torch.equal(v, official[k]), k
    assert infer_vae_config(official) == vae.config


def test_latents_of_the_other_vae_are_named(vae):
    from tests.test_vae import TINY_CONFIG

    wan21 = WanVAE(TINY_CONFIG)
    with pytest.raises(AliceError, match=r"Wan2.2 VAE \(z_dim 48\): load that VAE"):
        wan21.decode(torch.zeros(1, 48, 1, 2, 2))
    with pytest.raises(AliceError, match=r"Wan2.1 VAE \(z_dim 16\): load that VAE"):
        vae.decode(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(AliceError, match="multiples of 16"):
        vae.encode(torch.zeros(1, 3, 1, 24, 32))
