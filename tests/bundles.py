"""Small random-weight model bundles for tests (random weights are for tests only, never a user default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from alice_core.bundle import ModelBundle, ModelDefaults
from alice_core.loading.dit import CONFIG_METADATA_KEY
from alice_core.models.config import WanDiTConfig
from alice_core.models.dit import WanDiT


def save_dit(model: WanDiT, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())})
    return path


def random_tiny_bundle(folder: Path, seed: int = 0, dim: int = 32, num_layers: int = 1,
                       name: str = "random-test", image_to_video: bool = False,
                      image_dim: int | None = None) -> ModelBundle:
    """space-to-depth (stride 4) latents, MiniLM text, a 1-layer DiT for each sampler; 32x32, 9 frames. A larger
    dim / num_layers makes steps slow enough to watch (and cancel) a run in a browser test. `image_to_video`: the
    DiTs take Wan's y (mask + image latent) beside the noise, as Wan2.2 I2V does; `image_dim` also gives them Wan2.1
    I2V's CLIP image embedding input of that width (img_emb, k_img / v_img)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    channels, stride = 192, 4  # 3 x 4 x 4 x 4 values per latent position
    in_dim = 2 * channels + stride if image_to_video or image_dim else channels
    cfg = WanDiTConfig(dim=dim, ffn_dim=2 * dim, num_heads=2, num_layers=num_layers, in_dim=in_dim, out_dim=channels,
                       text_dim=384, text_len=32, image_dim=image_dim)
    dits = {}
    for sampler in ("rcm", "teacher"):
        dits[sampler] = save_dit(WanDiT(cfg), folder / f"dit_{sampler}.safetensors")
    bundle = ModelBundle(
        name=name, folder=folder, dits=dits,
        autoencoder={"type": "space_to_depth", "spatial_stride": 4, "temporal_stride": 4, "mean": 0.0, "std": 0.5},
        text_encoder="minilm",
        defaults=ModelDefaults(width=32, height=32, frames=9, fps=8, teacher_steps=6, guidance=3.0),
    )
    bundle.write()
    return bundle
