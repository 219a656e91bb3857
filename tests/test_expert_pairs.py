"""Wan2.2 A14B pairs end to end: every layout of a pair (official folder with sharded safetensors + index json,
diffusers pipeline folder with transformer_2 + boundary_ratio, rCM .pt / TurboWan .pth / ComfyUI fp8 single files),
image-to-video through the installed CLI, experts recorded per step, one swap per video, bad input named."""

import json

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file

from alice_core.cli import main
from alice_core.errors import AliceError
from alice_core.expert_swap import ExpertSwap
from alice_core.loading.experts import find_expert_pair, load_expert_pair
from alice_core.loading.quant import is_quantized_linear
from alice_core.models.config import WanVAEConfig
from alice_core.models.vae import WanVAE
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.sampling import Experts
from alice_core.video_io import read_video, read_video_metadata
from tests.test_dit_parity import official_key
from tests.test_formats import write_variant
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: diffusers-layout umT5 folder)


def diffusers_expert(seed: int, in_channels: int = 36) -> WanTransformer3DModel:
    # head_dim 128 as real Wan: the architecture is read from the shapes alone
    torch.manual_seed(seed)
    model = WanTransformer3DModel(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=64, text_dim=32,
                                  in_channels=in_channels, out_channels=16, rope_max_seq_len=64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def official_state(seed: int, in_channels: int = 36) -> dict[str, torch.Tensor]:
    return {official_key(k): v for k, v in diffusers_expert(seed, in_channels).state_dict().items()}


def write_sharded(state: dict[str, torch.Tensor], folder) -> None:
    """Wan2.2's release layout: diffusion_pytorch_model-0000N-of-0000M.safetensors + index json."""
    folder.mkdir(parents=True)
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(shards, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "i2v", "in_dim": 36}))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_umt5):  # noqa: F811
    root = tmp_path_factory.mktemp("pairs")
    vae = WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1))
    torch.save(vae.state_dict(), root / "Wan2.1_VAE.pth")
    write_sharded(official_state(1), root / "official" / "high_noise_model")
    write_sharded(official_state(2), root / "official" / "low_noise_model")
    diffusers_folder = root / "diffusers"
    diffusers_expert(1).save_pretrained(diffusers_folder / "transformer")
    diffusers_expert(2).save_pretrained(diffusers_folder / "transformer_2")
    (diffusers_folder / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9}))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "start.png")
    return root, tiny_umt5[0]


def test_pair_folders_are_found(files):
    root, _ = files
    official = find_expert_pair(root / "official")
    assert (official.high.name, official.low.name, official.boundary) == ("high_noise_model", "low_noise_model", None)
    diffusers = find_expert_pair(root / "diffusers")
    assert (diffusers.high.name, diffusers.low.name, diffusers.boundary) == ("transformer", "transformer_2", 0.9)
    assert find_expert_pair(root / "Wan2.1_VAE.pth") is None


def test_official_and_diffusers_folders_load_the_same_experts(files):
    root, _ = files
    official = load_expert_pair(root / "official" / "high_noise_model", root / "official" / "low_noise_model", "fp32")
    diffusers = load_expert_pair(root / "diffusers" / "transformer", root / "diffusers" / "transformer_2", "fp32")
    assert official.boundary == diffusers.boundary == 0.9  # Wan's I2V default: in_dim 36 > out_dim 16
    for a, b in ((official.high, diffusers.high), (official.low, diffusers.low)):
        assert a.config.in_dim == 36 and a.config.image_dim is None
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    assert not torch.equal(official.high.head.head.weight, official.low.head.head.weight)


@pytest.mark.parametrize("precision,stored", [("fp8_e4m3fn", torch.float8_e4m3fn), ("nf4", torch.uint8)])
@pytest.mark.parametrize("high_layout,low_layout", [("rcm", "rcm"), ("turbodiffusion", "turbodiffusion-int8"),
                                                    ("comfy-scaled-fp8", "comfy-scaled-fp8")])
def test_single_file_pairs_load_with_quantisation_on_both(tmp_path, high_layout, low_layout, precision, stored):
    high, _ = write_variant(official_state(3), high_layout, tmp_path / "high")
    low, _ = write_variant(official_state(4), low_layout, tmp_path / "low")
    pair = load_expert_pair(high, low, precision, boundary=0.9)
    for expert in (pair.high, pair.low):
        layer = expert.blocks[0].ffn[0]
        assert is_quantized_linear(layer) and layer.weight.dtype == stored and expert.config.in_dim == 36


def test_rcm_merged_pt_pair_loads_as_the_same_weights_in_the_official_layout(tmp_path):
    """rCM's Wan2.2-I2V-A14B-{high,low}-rCM*-merged.pt: bf16 torch pickles, `net.` prefix, the Linear patch
    embedding [dim, 36*1*2*2]. They hold plain tensors (torch's own weights_only reader takes them) and load as the
    very weights of the same experts saved in Wan's official layout."""
    states = {role: {k: v.to(torch.bfloat16) for k, v in official_state(seed).items()}
              for role, seed in (("high", 11), ("low", 12))}
    merged, official = {}, {}
    for role, state in states.items():
        merged[role], _ = write_variant(state, "rcm", tmp_path / "merged" / role)
        official[role], _ = write_variant(state, "official", tmp_path / "official" / role)
        raw = torch.load(merged[role], map_location="cpu", weights_only=True)
        assert raw["net.patch_embedding.weight"].shape == (128, 144) and raw["net.head.head.weight"].dtype == torch.bfloat16
    from_pt = load_expert_pair(merged["high"], merged["low"], "bf16")
    reference = load_expert_pair(official["high"], official["low"], "bf16")
    assert from_pt.boundary == reference.boundary == 0.9  # the I2V pair's default
    for a, b in ((from_pt.high, reference.high), (from_pt.low, reference.low)):
        assert a.config.in_dim == 36 and a.config.image_dim is None  # Wan2.2 I2V: no CLIP
        for (k, v), (k2, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert k == k2 and v.dtype == torch.bfloat16 and torch.equal(v, w), k
    patch = states["high"]["patch_embedding.weight"]
    assert torch.equal(from_pt.high.patch_embedding.weight, patch)  # the Linear folded back into the Conv3d weight


def test_pair_with_different_architectures_is_refused(tmp_path):
    high, _ = write_variant(official_state(3), "official", tmp_path / "high")
    low, _ = write_variant(official_state(4, in_channels=16), "official", tmp_path / "low")
    with pytest.raises(AliceError, match=r"different architectures \(in_dim 36 vs 16\); pass the two experts of one"):
        load_expert_pair(high, low)


def generate(files, tmp_path, capsys, *extra, name="out.mp4"):
    root, umt5 = files
    out = tmp_path / name
    argv = ["generate", "a cat", "-o", str(out), "--vae", str(root / "Wan2.1_VAE.pth"), "--text-encoder", str(umt5),
            "--frames", "5", "--width", "48", "--height", "32", "--seed", "1", *extra]
    code = main(argv)
    return code, out, capsys.readouterr().err


def test_cli_image_to_video_with_two_single_files(files, tmp_path, capsys):
    root, _ = files
    high, _ = write_variant(official_state(5), "rcm", tmp_path / "high")
    low, _ = write_variant(official_state(6), "turbodiffusion", tmp_path / "low")
    code, out, err = generate(files, tmp_path, capsys, "--model", str(high), "--low-noise-model", str(low),
                              "--sigma-max", "200", "--image", str(root / "start.png"))
    assert code == 0, err
    frames, _ = read_video(out)
    assert frames.shape == (5, 32, 48, 3)
    meta = read_video_metadata(out)
    assert meta["experts"] == "high,high,low,low" and float(meta["boundary"]) == 0.9 and meta["image"] == "start.png"


def test_cli_pair_folder_and_boundary_flag(files, tmp_path, capsys):
    root, _ = files
    code, out, err = generate(files, tmp_path, capsys, "--model", str(root / "diffusers"), "--boundary", "0.95",
                              "--steps", "3", "--image", str(root / "start.png"))
    assert code == 0, err
    # rCM times 0.988, 0.934, 0.853 against boundary 0.95
    assert read_video_metadata(out)["experts"] == "high,low,low"


def test_cli_bad_input_is_one_line(files, tmp_path, capsys):
    root, _ = files
    code, out, err = generate(files, tmp_path, capsys, "--model", str(root / "official"))
    assert code == 2 and "image-to-video model: pass a start image (--image START.png)" in err
    assert [line for line in err.splitlines() if "error" in line or "Traceback" in line] == [err.strip().splitlines()[-1]]
    assert not out.exists()
    t2v, _ = write_variant(official_state(7, in_channels=16), "official", tmp_path / "t2v")
    code, _, err = generate(files, tmp_path, capsys, "--model", str(t2v), "--image", str(root / "start.png"))
    assert code == 2 and "text-to-video model: it takes no start image; drop --image" in err
    code, _, err = generate(files, tmp_path, capsys, "--model", str(t2v), "--boundary", "0.9")
    assert code == 2 and "also pass --low-noise-model LOW" in err
    i2v, _ = write_variant(official_state(8), "official", tmp_path / "i2v")
    code, _, err = generate(files, tmp_path, capsys, "--model", str(t2v), "--low-noise-model", str(i2v))
    assert code == 2 and "have different architectures (in_dim 16 vs 36); pass the two experts of one" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = generate(files, tmp_path, capsys, "--model", str(root / "official"), "--image", str(root / "nope.png"))
    assert code == 2 and "--image" in err and "file not found" in err


def test_one_swap_per_video(files):
    """On a GPU only the expert in use is resident: the high-noise one comes on at the start, the low-noise one
    replaces it at the boundary; never per step. Moves are recorded instead of made (no GPU here)."""
    root, umt5 = files
    pipe = load_pipeline(str(root / "official"), vae=str(root / "Wan2.1_VAE.pth"), text_encoder=str(umt5))
    moves = []
    swap = pipe.swaps["rcm"]
    swap.device, swap.move = torch.device("meta"), lambda dit, device: moves.append(("high" if dit is swap.pair.high else "low", device.type))
    image = np.zeros((32, 48, 3), np.uint8)
    settings = GenerationSettings("a cat", frames=5, width=48, height=32, sigma_max=200.0)
    for _ in range(2):
        video = pipe.generate(settings, image=image)
        assert video.experts == ["high", "high", "low", "low"]
    assert moves == [("high", "meta"),  # video 1 starts
                     ("high", "cpu"), ("low", "meta"),  # boundary
                     ("low", "cpu"), ("high", "meta"),  # video 2 starts
                     ("high", "cpu"), ("low", "meta")]
    assert isinstance(pipe.dits["rcm"], Experts)


def test_ti2v_5b_text_to_video_with_the_wan22_vae(files, tmp_path, capsys):
    """A 48-channel DiT (TI2V-5B's latent) runs with the Wan2.2 VAE (stride 16), from text or from a start image;
    with the Wan2.1 VAE it is refused."""
    from alice_core.models.config import WAN22_VAE
    import dataclasses

    root, _ = files
    wan22 = WanVAE(dataclasses.replace(WAN22_VAE, base_dim=8, decoder_base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1))
    torch.save(wan22.state_dict(), tmp_path / "Wan2.2_VAE.pth")
    dit = {official_key(k): v for k, v in diffusers_expert(8, in_channels=48).state_dict().items()}
    dit["head.head.weight"], dit["head.head.bias"] = torch.randn(192, 128) * 0.05, torch.zeros(192)  # out_dim 48
    path, _ = write_variant(dit, "official", tmp_path / "ti2v")
    code, out, err = generate(files, tmp_path, capsys, "--model", str(path), "--vae", str(tmp_path / "Wan2.2_VAE.pth"),
                              "--width", "64", "--height", "64")
    assert code == 0, err
    assert read_video(out)[0].shape == (5, 64, 64, 3)
    # TI2V: the start image becomes the first latent frame
    code, out, err = generate(files, tmp_path, capsys, "--model", str(path), "--vae", str(tmp_path / "Wan2.2_VAE.pth"),
                              "--width", "64", "--height", "64", "--image", str(root / "start.png"), name="ti2v.mp4")
    assert code == 0, err
    assert read_video_metadata(out)["image"] == "start.png"
    code, _, err = generate(files, tmp_path, capsys, "--model", str(path), "--width", "64", "--height", "64",
                            name="wrong.mp4")
    assert code == 2 and "use the Wan2.2 VAE (z_dim 48) (--vae)" in err


def test_preset_defaults_reach_the_sampler(files):
    """A catalogue preset's boundary and sigma_max apply when the command line gives none."""
    root, umt5 = files
    pipe = load_pipeline(str(root / "official"), vae=str(root / "Wan2.1_VAE.pth"), text_encoder=str(umt5),
                         defaults={"boundary": 0.95, "sigma_max": 200.0, "frames": 5, "width": 48, "height": 32})
    video = pipe.generate(GenerationSettings("a cat"), image=np.zeros((32, 48, 3), np.uint8))
    assert video.experts == ["high", "low", "low", "low"]  # 0.995 >= 0.95 > 0.934
    assert (video.settings.boundary, video.settings.sigma_max, video.frames.shape) == (0.95, 200.0, (5, 32, 48, 3))
