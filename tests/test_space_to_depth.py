import numpy as np
import pytest
import torch

from alice_core.errors import AliceError
from alice_core.models.interfaces import VideoAutoencoder
from alice_core.models.space_to_depth import SpaceToDepthAutoencoder, SpaceToDepthConfig
from alice_core.train.data import clips_to_video
from alice_core.world import make_training_batch


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_lossless_on_rendered_clips(stride):
    clips, _ = make_training_batch(np.random.default_rng(5), 4, size=32, frames=9)
    video = clips_to_video(clips)
    ae = SpaceToDepthAutoencoder(SpaceToDepthConfig(spatial_stride=stride, mean=-0.4, std=0.37))
    assert isinstance(ae, VideoAutoencoder)
    latent = ae.encode(video)
    assert latent.shape == (4, 3 * 4 * stride**2, 3, 32 // stride, 32 // stride)
    back = ((ae.decode(latent) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.array_equal(back, clips)  # lossless: infinite PSNR


def test_first_frame_slot_is_averaged_and_shapes_checked():
    ae = SpaceToDepthAutoencoder()
    latent = ae.encode(torch.zeros(1, 3, 5, 4, 4))
    latent[:, :] = torch.randn_like(latent)
    video = ae.decode(latent)
    assert video.shape == (1, 3, 5, 4, 4) and video.abs().max() <= 1
    with pytest.raises(AliceError, match="frames must be 4k\\+1"):
        ae.encode(torch.zeros(1, 3, 6, 4, 4))
    with pytest.raises(AliceError, match="multiples of 2"):
        ae.encode(torch.zeros(1, 3, 5, 5, 4))
