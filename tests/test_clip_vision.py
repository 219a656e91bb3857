"""Wan2.1 I2V's CLIP vision encoder: loading transformers folders and ComfyUI-style single files, Wan's
preprocessing (224 bicubic resize, CLIP mean/std, penultimate block), and a Wan2.1 I2V model through the CLI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from alice_core.cli import main
from alice_core.errors import AliceError
from alice_core.loading.clip_vision import load_clip_vision
from alice_core.video_io import read_video_metadata
from tests.test_dit_parity import official_key
from tests.test_formats import write_variant
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: diffusers-layout umT5 folder)

WIDTH = 160  # 2 heads of 80, as ViT-H's heads


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=28, patch_size=14, hidden_act="gelu")
    model = CLIPVisionModel(config).eval()
    model.save_pretrained(root / "folder")
    # ComfyUI's clip_vision_h.safetensors spells the tower `vision_model.*` (transformers 4 names) and holds the
    # projection too
    state = {"vision_model." + k.removeprefix("vision_model."): v.contiguous() for k, v in model.state_dict().items()}
    state["visual_projection.weight"] = torch.randn(16, WIDTH)
    save_file(state, str(root / "clip_vision_tiny.safetensors"))
    return root, model


def reference_tokens(model, image: torch.Tensor) -> torch.Tensor:
    """Wan's CLIP input written out here: [-1, 1] -> 224-style bicubic resize -> [0, 1] -> CLIP normalisation."""
    x = F.interpolate(image, size=(28, 28), mode="bicubic", align_corners=False) * 0.5 + 0.5
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        states = model(pixel_values=(x - mean) / std, output_hidden_states=True).hidden_states
    return states[len(states) - 2]  # after the second-to-last block


def test_single_file_and_folder_give_wans_clip_tokens(clip_files):
    root, model = clip_files
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = reference_tokens(model, image)
    for source in (root / "clip_vision_tiny.safetensors", root / "folder"):
        encoder = load_clip_vision(source)
        tokens = encoder.encode(image)
        assert tokens.shape == (1, 5, WIDTH) and encoder.width == WIDTH
        assert (tokens - expected).abs().max() < 1e-5


def test_bad_clip_files_are_named(tmp_path):
    save_file({"encoder.conv1.weight": torch.zeros(1)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(AliceError, match="not a CLIP vision checkpoint"):
        load_clip_vision(tmp_path / "vae.safetensors")
    with pytest.raises(AliceError, match="CLIP vision encoder not found"):
        load_clip_vision(tmp_path / "missing.safetensors")


def test_wan21_i2v_through_the_cli(clip_files, tiny_umt5, tmp_path, capsys):  # noqa: F811
    from alice_core.models.config import WanVAEConfig
    from alice_core.models.vae import WanVAE

    root, _ = clip_files
    torch.manual_seed(2)
    dit = WanTransformer3DModel(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=64, text_dim=32,
                                in_channels=36, out_channels=16, image_dim=WIDTH, added_kv_proj_dim=128)
    path, _ = write_variant({official_key(k): v for k, v in dit.state_dict().items()}, "official", tmp_path / "i2v")
    torch.save(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).state_dict(), tmp_path / "vae.pth")
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(tmp_path / "start.png")
    base = ["generate", "a cat", "--model", str(path), "--vae", str(tmp_path / "vae.pth"), "--text-encoder",
            str(tiny_umt5[0]), "--frames", "5", "--width", "48", "--height", "32", "--image", str(tmp_path / "start.png")]
    assert main([*base, "-o", str(tmp_path / "no_clip.mp4")]) == 2
    assert "needs the CLIP vision encoder; pass --clip-vision PATH" in capsys.readouterr().err
    out = tmp_path / "i2v.mp4"
    assert main([*base, "-o", str(out), "--clip-vision", str(root / "clip_vision_tiny.safetensors")]) == 0, capsys.readouterr().err
    assert read_video_metadata(out)["image"] == "start.png"


def open_clip_state(model) -> dict[str, torch.Tensor]:
    """transformers' CLIPVisionModel weights in Wan's open-clip layout (wan/modules/clip.py VisionTransformer under
    `visual.`), with a text-tower key and the projection head beside them as in Wan's file."""
    hf = {k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    state = {"visual.patch_embedding.weight": hf["embeddings.patch_embedding.weight"],
             "visual.cls_embedding": hf["embeddings.class_embedding"].reshape(1, 1, -1),
             "visual.pos_embedding": hf["embeddings.position_embedding.weight"][None],
             "visual.head": torch.randn(WIDTH, 16), "textual.token_embedding.weight": torch.randn(10, 8),
             "log_scale": torch.tensor(2.0)}
    for ours, theirs in (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")):
        state |= {f"visual.{ours}.{p}": hf[f"{theirs}.{p}"] for p in ("weight", "bias")}
    for i in range(model.config.num_hidden_layers):
        layer = f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            state[f"visual.transformer.{i}.attn.to_qkv.{p}"] = torch.cat(
                [hf[f"{layer}self_attn.{x}_proj.{p}"] for x in "qkv"])
            pairs = (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                     ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"))
            state |= {f"visual.transformer.{i}.{ours}.{p}": hf[f"{layer}{theirs}.{p}"] for ours, theirs in pairs}
    return state


def test_wans_open_clip_pth_gives_the_same_tokens_as_transformers(clip_files, tmp_path):
    _, model = clip_files
    state = open_clip_state(model)
    # the fused rows read as Wan's SelfAttention reads them: to_qkv(x).view(b, s, 3, heads, head_dim).unbind(2)
    x = torch.randn(1, 3, WIDTH)
    heads = model.config.num_attention_heads
    fused = F.linear(x, state["visual.transformer.0.attn.to_qkv.weight"], state["visual.transformer.0.attn.to_qkv.bias"])
    q, k, v = fused.view(1, 3, 3, heads, WIDTH // heads).unbind(2)
    attn = next(m for n, m in model.named_modules() if n.endswith("encoder.layers.0.self_attn"))  # 4 and 5 names
    with torch.no_grad():
        for got, proj in ((q, attn.q_proj), (k, attn.k_proj), (v, attn.v_proj)):
            torch.testing.assert_close(got.reshape(1, 3, WIDTH), proj(x))
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(state, path)
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(2)) * 2 - 1
    encoder = load_clip_vision(path)
    assert encoder.width == WIDTH and encoder.model.config.num_hidden_layers == model.config.num_hidden_layers
    assert (encoder.encode(image) - reference_tokens(model, image)).abs().max() < 1e-5
