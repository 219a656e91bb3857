"""Checkpoint format detection and dequantisation: every layout is written here from one random model by code
that follows each project's conventions independently of alice_core, then detected and loaded back."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.loading.checkpoint import SafetensorsReader, open_checkpoint
from alice_core.loading.dit import load_dit
from alice_core.loading.formats import detect_format, inspect_checkpoint
from alice_core.models.config import DIT_PRESETS, WanDiTConfig
from alice_core.models.dit import WanDiT

# head_dim 128 like real Wan models, so num_heads is inferred from shapes; ffn 192 leaves partial 128-blocks.
CFG = WanDiTConfig(dim=256, ffn_dim=192, num_heads=2, num_layers=2, text_dim=32, freq_dim=256)
ARCH_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim", "patch_size")


def random_state(cfg: WanDiTConfig = CFG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout weights with non-trivial values everywhere (fp32)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    return {k: torch.randn(s, generator=g) * (0.5 / math.sqrt(s[-1]) if len(s) >= 2 else 0.1) for k, s in shapes.items()}


def linear_weight_keys(state: dict[str, torch.Tensor], blocks_only: bool) -> list[str]:
    return [k for k, v in state.items()
            if k.endswith(".weight") and v.ndim == 2 and (k.startswith("blocks.") or not blocks_only)]


def int8_blocks_reference(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """TurboDiffusion-style int8: per 128x128 block, scale = amax / 127, q = round(w / scale)."""
    rows, cols = w.shape
    q = torch.empty(rows, cols, dtype=torch.int8)
    scale = torch.empty(math.ceil(rows / block), math.ceil(cols / block))
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            s = tile.abs().max() / 127
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / s).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def expected_int8_weight(q: torch.Tensor, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    out = torch.empty(q.shape)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            rows, cols = slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block)
            out[rows, cols] = q[rows, cols].float() * scale[i, j]
    return out


def write_variant(state: dict[str, torch.Tensor], layout: str, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write `state` in `layout`; returns the path and the official-layout fp32 weights a loader must produce."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = dict(state)
    patch = state["patch_embedding.weight"]
    if layout == "official":
        path = folder / "wan.safetensors"
        save_file(state, str(path))
    elif layout == "rcm":
        path = folder / "rcm.pt"
        flat = {**state, "patch_embedding.weight": patch.reshape(patch.shape[0], -1)}
        torch.save({f"net.{k}": v for k, v in flat.items()}, path)
    elif layout == "turbodiffusion":
        path = folder / "TurboWan.pth"
        flat = {**state, "patch_embedding.weight": patch.reshape(patch.shape[0], -1)}
        head_dim = CFG.dim // CFG.num_heads
        for i in range(CFG.num_layers):
            flat[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.weight"] = torch.randn(head_dim, head_dim)
            flat[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.bias"] = torch.randn(head_dim)
        torch.save(flat, path)
    elif layout == "turbodiffusion-int8":
        path = folder / "TurboWan-quant.pth"
        flat = {**state, "patch_embedding.weight": patch.reshape(patch.shape[0], -1)}
        for key in linear_weight_keys(state, blocks_only=True):
            base = key.removesuffix(".weight")
            q, scale = int8_blocks_reference(flat.pop(key))
            flat[f"{base}.int8_weight"], flat[f"{base}.scale"] = q, scale
            expected[key] = expected_int8_weight(q, scale)
        torch.save(flat, path)
    elif layout == "comfy-scaled-fp8":
        path = folder / "wan_fp8_scaled.safetensors"
        out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
        for key, value in state.items():
            if key in linear_weight_keys(state, blocks_only=False):
                scale = value.abs().max() / 448
                q = (value / scale).to(torch.float8_e4m3fn)
                base = key.removesuffix("weight")
                out[key], out[base + "scale_weight"], out[base + "scale_input"] = q, scale.reshape(()), torch.ones(())
                expected[key] = q.float() * scale
            else:
                out[key] = value.to(torch.float16)
                expected[key] = value.to(torch.float16).float()
        save_file(out, str(path))
    else:
        raise ValueError(layout)
    return path, expected


LAYOUT_CASES = ["official", "rcm", "turbodiffusion", "turbodiffusion-int8", "comfy-scaled-fp8"]


@pytest.mark.parametrize("layout", LAYOUT_CASES)
def test_each_layout_detected_with_architecture_and_loaded_exactly(layout, tmp_path):
    state = random_state()
    path, expected = write_variant(state, layout, tmp_path)
    fmt = inspect_checkpoint(path)
    assert fmt.layout == layout
    assert all(getattr(fmt.config, f) == getattr(CFG, f) for f in ARCH_FIELDS)
    report = fmt.describe()
    assert layout in report and "dim 256, 2 heads, 2 layers, ffn 192, in_dim 16" in report

    model = load_dit(path, dtype=torch.float32)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_turbodiffusion_ignored_keys_are_reported(tmp_path):
    path, _ = write_variant(random_state(), "turbodiffusion", tmp_path)
    fmt = inspect_checkpoint(path)
    assert len(fmt.ignored) == 2 * CFG.num_layers
    assert "sparse-linear-attention" in fmt.describe()


def test_diffusers_folder_detected(tmp_path):
    from diffusers import WanTransformer3DModel

    from tests.test_dit_parity import official_key

    torch.manual_seed(0)
    ref = WanTransformer3DModel(num_layers=2, num_attention_heads=2, attention_head_dim=128, ffn_dim=192, text_dim=32,
                                in_channels=16, out_channels=16, freq_dim=256, patch_size=(1, 2, 2))
    ref.save_pretrained(tmp_path / "transformer")
    fmt = inspect_checkpoint(tmp_path)  # a pipeline root holding transformer/
    assert fmt.layout == "diffusers" and fmt.config.num_layers == 2 and fmt.config.ffn_dim == 192
    loaded = load_dit(tmp_path).state_dict()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(loaded[official_key(key)], value, rtol=0, atol=0)


@pytest.mark.parametrize("preset", sorted(DIT_PRESETS))
def test_real_sizes_detected_from_shapes_alone(preset):
    """Full-size 1.3B / 14B / 5B layouts on the meta device: shapes only, nothing allocated."""
    cfg = DIT_PRESETS[preset]
    with torch.device("meta"):
        state = WanDiT(cfg).state_dict()
    found = detect_format(state).config
    assert all(getattr(found, f) == getattr(cfg, f) for f in ARCH_FIELDS)
    rcm = {f"net.{k}": v for k, v in state.items()}
    rcm["net.patch_embedding.weight"] = state["patch_embedding.weight"].reshape(cfg.dim, cfg.in_dim * 4)
    fmt = detect_format(rcm)
    assert fmt.layout == "rcm" and fmt.prefix == "net." and fmt.config.dim == cfg.dim


def test_unknown_file_names_file_and_expected_keys(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(AliceError) as err:
        inspect_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "head.modulation" in msg and "encoder.conv1.weight" in msg


def test_inconsistent_file_names_expected_and_found_shapes(tmp_path):
    state = random_state()
    state["blocks.1.ffn.0.weight"] = torch.zeros(100, 256)
    del state["blocks.0.cross_attn.o.bias"]
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(AliceError) as err:
        load_dit(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "blocks.0.cross_attn.o.bias" in msg and "missing 1 keys" in msg
    assert "blocks.1.ffn.0.weight: expected (192, 256), found (100, 256)" in msg


def test_int8_scale_of_wrong_shape_is_named(tmp_path):
    path, _ = write_variant(random_state(), "turbodiffusion-int8", tmp_path)
    state = torch.load(path, weights_only=True)
    state["blocks.0.ffn.0.scale"] = torch.ones(1, 1)
    bad = tmp_path / "bad-quant.pth"
    torch.save(state, bad)
    with pytest.raises(AliceError, match=r"blocks\.0\.ffn\.0\.scale.*expected shape \(2, 2\), found \(1, 1\)"):
        inspect_checkpoint(bad)


def test_image_to_video_checkpoints_are_detected(tmp_path):
    """Wan2.1 I2V (in_dim 36, img_emb + k_img/v_img) and Wan2.2 I2V (in_dim 36 only) from the shapes alone."""
    for image_dim in (1280, None):
        cfg = dataclasses.replace(CFG, in_dim=36, image_dim=image_dim)
        fmt = detect_format(random_state(cfg), "i2v.safetensors")
        assert (fmt.config.in_dim, fmt.config.out_dim, fmt.config.image_dim) == (36, 16, image_dim)
    # an image key without the rest of the image branch does not fit any architecture
    state = random_state()
    state["blocks.0.cross_attn.k_img.weight"] = torch.zeros(256, 256)
    with pytest.raises(AliceError, match=r"unexpected 1 keys.*k_img"):
        detect_format(state, "i2v.safetensors")


def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"head.modulation": torch.zeros(1, 2, 8), "x": Payload()}, path)
    with pytest.raises(AliceError, match=r"refused to load: the file is a pickle that wants to run code \(getattr"):
        load_dit(path)
    assert not marker.exists()


def test_pt_files_are_memory_mapped_and_legacy_files_still_load(tmp_path):
    torch.save({"a": torch.arange(6.0)}, tmp_path / "new.pt")
    torch.save({"a": torch.arange(6.0)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with open_checkpoint(tmp_path / "new.pt") as new, open_checkpoint(tmp_path / "old.pt") as old:
        assert new._mapped and not old._mapped
        assert torch.equal(new.read("a"), torch.arange(6.0)) and torch.equal(old.read("a"), torch.arange(6.0))


def test_safetensors_reader_matches_safetensors_for_every_dtype(tmp_path):
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16), "f16": torch.randn(7).half(), "f32": torch.randn(2, 2, 2),
        "e4m3": torch.randn(4, 4).to(torch.float8_e4m3fn), "e5m2": torch.randn(9).to(torch.float8_e5m2),
        "i8": torch.randint(-128, 127, (6,), dtype=torch.int8), "i64": torch.tensor(7), "empty": torch.empty(0),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    with SafetensorsReader(path) as reader, safe_open(str(path), "pt") as ref:
        assert reader.metadata == {"k": "v"}
        for key in tensors:
            ours, theirs = reader.read(key), ref.get_tensor(key)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            assert torch.equal(ours.reshape(-1).view(torch.uint8), theirs.reshape(-1).view(torch.uint8))


def test_corrupt_safetensors_is_named(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AliceError, match=r"cut\.safetensors.*truncated"):
        open_checkpoint(path)
