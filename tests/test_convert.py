"""`alice convert`: round trips between layouts, diffusers loading our output, and the CLI's file handling."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors import safe_open

from alice_core.cli.convert import add_parser as add_convert_parser
from alice_core.cli.convert import run as run_convert
from alice_core.errors import AliceError
from alice_core.loading.convert import convert_checkpoint
from alice_core.loading.dit import load_dit
from alice_core.loading.formats import inspect_checkpoint
from tests.test_formats import CFG, random_state, write_variant


def state_of(path) -> dict[str, torch.Tensor]:
    return load_dit(path, dtype=torch.float32).state_dict()


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def official(tmp_path):
    return write_variant(random_state(), "official", tmp_path / "src")


def test_official_diffusers_official_round_trip_is_exact(official, tmp_path):
    path, expected = official
    folder = convert_checkpoint(path, tmp_path / "wan-diffusers", "diffusers").path
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert inspect_checkpoint(folder).layout == "diffusers"
    back = convert_checkpoint(folder, tmp_path / "back.safetensors", "official").path
    assert inspect_checkpoint(back).layout == "official"
    assert_same_state(state_of(back), expected)
    assert_same_state(state_of(folder), expected)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_diffusers_loads_our_folder_and_computes_the_same(official, tmp_path):
    from diffusers import WanTransformer3DModel

    path, _ = official
    folder = convert_checkpoint(path, tmp_path / "wan-diffusers", "diffusers").path
    theirs = WanTransformer3DModel.from_pretrained(folder).eval()
    ours = load_dit(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 16, 2, 4, 6, generator=g), torch.tensor([600.0]), torch.randn(1, 512, 32, generator=g)
    with torch.no_grad():
        expected = theirs(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        got = ours(x, t, ctx)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4  # only the timestep embedding's float64 differs


def test_comfy_fp8_output_format_and_round_trip(official, tmp_path):
    path, expected = official
    fp8 = convert_checkpoint(path, tmp_path / "wan_fp8_scaled.safetensors", "comfy-fp8").path
    with safe_open(str(fp8), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("scaled_fp8").dtype == torch.float8_e4m3fn
        weight, scale = f.get_tensor("blocks.0.ffn.0.weight"), f.get_tensor("blocks.0.ffn.0.scale_weight")
        assert weight.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == ()
        assert f.get_tensor("head.head.weight").dtype == torch.float8_e4m3fn  # every Linear, as ComfyUI ships them
        assert f.get_tensor("blocks.0.norm3.weight").dtype == torch.float32  # other tensors as stored
        assert f.get_tensor("patch_embedding.weight").ndim == 5
    assert sum(k.endswith(".scale_weight") for k in keys) == 2 * 10 + 6  # 10 Linears per block, 6 outside
    assert inspect_checkpoint(fp8).layout == "comfy-scaled-fp8"

    loaded = state_of(fp8)
    for key, value in expected.items():
        if value.ndim == 2:
            assert 0 < ((loaded[key] - value).norm() / value.norm()).item() < 0.04, key  # fp8 rounding only
        else:
            assert torch.equal(loaded[key], value), key

    again = convert_checkpoint(fp8, tmp_path / "again.safetensors", "comfy-fp8").path
    with safe_open(str(fp8), "pt") as a, safe_open(str(again), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():  # fp8 bytes and scales are carried over, not re-quantised
            bytes_a, bytes_b = (f.get_tensor(key).reshape(-1).view(torch.uint8) for f in (a, b))
            assert torch.equal(bytes_a, bytes_b), key


@pytest.mark.parametrize("layout", ["rcm", "turbodiffusion-int8"])
def test_rcm_and_turbodiffusion_to_official(layout, tmp_path):
    path, expected = write_variant(random_state(), layout, tmp_path / "src")
    out = convert_checkpoint(path, tmp_path / "official.safetensors", "official", dtype="fp32").path
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("patch_embedding.weight").shape == (256, 16, 1, 2, 2)
        assert json.loads(f.metadata()["alice_dit_config"])["num_layers"] == 2
        assert f.metadata()["alice_source_layout"] == layout
    assert_same_state(state_of(out), expected)


def test_dtype_option_and_dequantised_default(tmp_path):
    path, _ = write_variant(random_state(), "turbodiffusion-int8", tmp_path / "src")
    out = convert_checkpoint(path, tmp_path / "a.safetensors", "official").path
    half = convert_checkpoint(path, tmp_path / "b.safetensors", "official", dtype="fp16").path
    with safe_open(str(out), "pt") as a, safe_open(str(half), "pt") as b:
        assert a.get_tensor("blocks.0.ffn.0.weight").dtype == torch.bfloat16  # dequantised int8 -> bf16
        assert a.get_tensor("blocks.0.norm3.weight").dtype == torch.float32  # stored fp32, kept
        assert {b.get_tensor(k).dtype for k in b.keys()} == {torch.float16}


def test_cli_converts_and_never_overwrites(official, tmp_path, capsys):
    path, _ = official
    parser = argparse.ArgumentParser()
    add_convert_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "wan-diffusers"
    assert run_convert(parser.parse_args(["convert", str(path), str(out), "--to", "diffusers"])) == 0
    printed = capsys.readouterr().out
    assert "layout: official" in printed and f"wrote {out}" in printed
    with pytest.raises(AliceError, match="already exists"):
        run_convert(parser.parse_args(["convert", str(path), str(out), "--to", "diffusers"]))
    with pytest.raises(AliceError, match=r"\.safetensors"):
        run_convert(parser.parse_args(["convert", str(path), str(tmp_path / "x.pt"), "--to", "official"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", str(path), str(tmp_path / "y"), "--to", "gguf"])


def test_failed_conversion_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.conv.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(AliceError, match="not a Wan DiT checkpoint"):
        convert_checkpoint(bad, tmp_path / "out.safetensors", "official")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
