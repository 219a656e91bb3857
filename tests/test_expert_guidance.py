"""Wan2.2's per-expert teacher guidance at the front doors: `--guidance HIGH,LOW` on the CLI (recorded in the video's
metadata), Wan's T2V / I2V A14B teacher defaults for a pair loaded from files, against the library's per-expert
sampler (the one compared with diffusers' `guidance_scale_2` in test_two_experts.py)."""

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.expert_swap import velocities
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.sampling import Experts, sample_flow_matching
from alice_core.video_io import read_video_metadata
from tests.test_expert_pairs import files, generate, official_state  # noqa: F401  (fixture)
from tests.test_formats import write_variant
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def t2v_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v_pair")
    high, _ = write_variant(official_state(11, in_channels=16), "rcm", folder / "high")
    low, _ = write_variant(official_state(12, in_channels=16), "official", folder / "low")
    return str(high), str(low)


def test_cli_guidance_per_expert_and_wan_defaults(files, t2v_pair, tmp_path, capsys):
    high, low = t2v_pair
    pair = ("--model", high, "--low-noise-model", low, "--sampler", "teacher", "--steps", "3")
    code, out, err = generate(files, tmp_path, capsys, *pair)
    assert code == 0, err
    meta = read_video_metadata(out)  # Wan2.2 T2V-A14B: shift 12, guide (low 3, high 4)
    assert (float(meta["guidance"]), float(meta["guidance_low"]), float(meta["shift"])) == (4.0, 3.0, 12.0)
    code, out, err = generate(files, tmp_path, capsys, *pair, "--guidance", "6,2.5", name="two.mp4")
    assert code == 0, err
    meta = read_video_metadata(out)
    assert (float(meta["guidance"]), float(meta["guidance_low"])) == (6.0, 2.5)
    code, out, err = generate(files, tmp_path, capsys, *pair, "--guidance", "7", name="one.mp4")
    assert code == 0, err
    assert float(read_video_metadata(out)["guidance_low"]) == 7.0  # one value: both experts
    for bad in ("4,x", "4,3,2", ""):
        code, out, err = generate(files, tmp_path, capsys, *pair, "--guidance", bad, name="bad.mp4")
        assert code == 2 and "--guidance" in err and "HIGH,LOW" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_pair_guidance_matches_the_per_expert_sampler(files, t2v_pair):
    root, umt5 = files
    high, low = t2v_pair
    pipe = load_pipeline(high, vae=str(root / "Wan2.1_VAE.pth"), text_encoder=str(umt5), low_noise_model=low)
    settings = GenerationSettings("a cat", negative_prompt="blur", sampler="teacher", steps=4, frames=5, width=48,
                                  height=32, guidance=6.0, guidance_low=2.0)
    s = pipe.resolve(settings)
    noise = torch.randn(pipe.latent_shape(s), generator=torch.Generator().manual_seed(3))
    got = pipe(settings, latents=noise.clone(), output_type="latent").latents
    cond = pipe.encode_prompts("a cat", "blur")
    dits = pipe.dits["teacher"]
    want = sample_flow_matching(velocities(dits, cond.positive, None, None), velocities(dits, cond.negative, None, None),
                                noise.shape, torch.Generator(), steps=4, guidance=Experts(6.0, 2.0, 0.875), shift=12.0,
                                noise=noise.clone())
    torch.testing.assert_close(got, want)
    one = pipe(GenerationSettings(**{**vars(settings), "guidance_low": None}), latents=noise.clone(),
               output_type="latent").latents
    assert not torch.allclose(one, got)  # the low-noise expert's own guidance changed the result


def test_i2v_pair_defaults_and_single_dit_refuses_two_values(files):
    root, umt5 = files
    pipe = load_pipeline(str(root / "official"), vae=str(root / "Wan2.1_VAE.pth"), text_encoder=str(umt5))
    s = pipe.resolve(GenerationSettings("a cat", sampler="teacher", image="start.png"))
    assert (s.guidance, s.guidance_low, s.shift, s.boundary) == (3.5, 3.5, 5.0, 0.9)  # Wan2.2 I2V-A14B
    preset = load_pipeline(str(root / "official"), vae=str(root / "Wan2.1_VAE.pth"), text_encoder=str(umt5),
                           defaults={"shift": 3.0})
    assert preset.resolve(GenerationSettings("a cat", sampler="teacher", image="start.png")).shift == 3.0
    single, _ = write_variant(official_state(13, in_channels=16), "official", root / "single")
    pipe = load_pipeline(str(single), vae=str(root / "Wan2.1_VAE.pth"), text_encoder=str(umt5))
    assert pipe.resolve(GenerationSettings("a cat", sampler="teacher")).guidance_low is None
    with pytest.raises(AliceError, match=r"two-expert .* has one DiT: use --guidance 4$"):
        pipe.resolve(GenerationSettings("a cat", sampler="teacher", guidance=4.0, guidance_low=3.0))
