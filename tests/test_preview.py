"""Live previews: the linear latent->RGB fit, the exact alice-tiny preview, and the Wan VAE's fitted factors."""

import numpy as np
import torch

from alice_core.models.config import WanVAEConfig
from alice_core.models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig
from alice_core.models.vae import WanVAE
from alice_core.preview import (
    exact_previewer,
    fit_latent_rgb,
    pooled_decode,
    previewer_for,
    previewer_for_space,
    remember_wan_vae,
    world_latents,
)
from alice_core.models.latent_space import latent_space_of


def block_means(video: np.ndarray, t: int, s: int) -> np.ndarray:
    """Independent pooling in numpy: [3, F, H, W] -> per latent pixel means (first frame alone, then t-frame groups)."""
    groups = [video[:, :1]] + [video[:, i : i + t] for i in range(1, video.shape[1], t)]
    frames = np.stack([g.mean(axis=1) for g in groups], axis=1)
    c, f, h, w = frames.shape
    return frames.reshape(c, f, h // s, s, w // s, s).mean(axis=(3, 5))


def test_fit_recovers_an_exactly_linear_decoder():
    # space-to-depth decode is linear in the latent, so block means are too: the least-squares fit must be exact
    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig(spatial_stride=2, temporal_stride=4, mean=0.1, std=0.5))
    latents = world_latents(ae, clips=3, size=32)
    fitted = fit_latent_rgb(ae, latents)
    target = block_means(ae.decode(latents)[0].numpy(), 4, 2)
    assert np.allclose(pooled_decode(ae, latents)[0].numpy(), target, atol=1e-5)
    predicted = torch.einsum("bcfhw,cr->brfhw", latents, fitted.weight) + fitted.bias[None, :, None, None, None]
    assert torch.allclose(predicted[0], torch.from_numpy(target).float(), atol=1e-4)


def test_exact_preview_is_a_frame_of_the_whole_decode():
    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig())
    latents = world_latents(ae, clips=1, size=32)
    image = exact_previewer(ae)(latents)
    mid = latents.shape[2] // 2  # the first frame of the middle latent frame's block of the decoded video
    expected = ((ae.decode(latents)[0, :, 1 + (mid - 1) * ae.temporal_stride] + 1) * 127.5).round()
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, expected.permute(1, 2, 0).numpy().astype(np.uint8))
    # from the latent space alone (a ComfyUI sampler node) the same preview
    assert np.array_equal(previewer_for_space(latent_space_of(ae))(latents), image)


def test_wan_vae_factors_explain_its_decodes_on_new_clips():
    torch.manual_seed(0)
    vae = WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).eval()
    assert previewer_for_space(latent_space_of(vae)) is None  # no Wan VAE loaded in this process yet
    remember_wan_vae(vae)
    fitted = previewer_for_space(latent_space_of(vae))
    assert fitted is previewer_for(vae)  # fitted once per VAE
    held_out = world_latents(vae, clips=2, size=64, seed=7)
    target = pooled_decode(vae, held_out)
    predicted = torch.einsum("bcfhw,cr->brfhw", held_out, fitted.weight) + fitted.bias[None, :, None, None, None]
    residual = ((predicted - target) ** 2).mean()
    baseline = ((target - target.mean(dim=(0, 2, 3, 4), keepdim=True)) ** 2).mean()
    assert residual < 0.5 * baseline, (residual, baseline)  # the map explains most of the colour variance
    image = fitted(held_out)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8


def test_exact_preview_from_the_latent_space_of_a_haar_latent():
    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig(mean=0.2, std=0.7, block_transform="haar"))
    latents = world_latents(ae, clips=1, size=32)
    assert np.array_equal(previewer_for_space(latent_space_of(ae))(latents), exact_previewer(ae)(latents))
