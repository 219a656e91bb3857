"""The CLIP ViT-H/14 image encoder of Wan2.1 I2V, run through transformers' `CLIPVisionModel`.

Wan feeds the start image, resized to 224x224 (bicubic, no crop) and normalised with CLIP's mean/std, through the
vision transformer and keeps the states after its second-to-last block: 257 tokens x 1280 (the class token and
16x16 patches), which the DiT's `img_emb` projects into its cross-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import AliceError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# open-clip ViT-H/14 (xlm-roberta-large-vit-huge-14) as transformers configures it; GELU, not CLIP's quick-GELU.
VIT_H_14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)


class ClipImageEncoder:
    """image [B, 3, H, W] in [-1, 1] -> CLIP tokens [B, 1 + (size/patch)^2, hidden] (penultimate block's states)."""

    def __init__(self, model) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = model.config.image_size
        self.width = model.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise AliceError(f"CLIP image encoder expects images [B, 3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        x = F.interpolate(image.float(), size=(self.image_size,) * 2, mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return ((x * 0.5 + 0.5) - mean) / std

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        pixels = self.preprocess(image.to(device)).to(self.dtype)
        with torch.inference_mode():
            out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2].float()
