"""Wan2.2 two-expert sampling and the image-to-video conditioning tensor, against diffusers' WanPipeline
(transformer + transformer_2 + boundary_ratio) and WanImageToVideoPipeline on small random weights."""

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

from alice_core.conditioning import fit_image, image_condition
from alice_core.errors import AliceError
from alice_core.loading.dit import build_dit
from alice_core.loading.vae import load_wan_vae
from alice_core.models.config import WanDiTConfig
from alice_core.sampling import (
    Experts, StepControl, flow_matching_timesteps, sample_flow_matching, sample_rcm, seeded_noise,
)
from tests.test_dit_parity import rel_err, tiny_diffusers_model
from tests.test_vae import TINY as TINY_VAE, official_key as vae_official_key, randomise

TEXT_LEN = 24
CFG = WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, text_len=TEXT_LEN)


def test_rcm_i2v_schedule_runs_two_steps_on_each_expert():
    """rCM Wan2.2 I2V: sigma_max 200, boundary 0.9 -> times 0.995, 0.934, 0.853, 0.609 -> high, high, low, low."""
    seen = []

    def network(name):
        def velocity(x, t):
            seen.append((name, t[0].item()))
            return torch.zeros_like(x)
        return velocity

    control = StepControl()
    sample_rcm(Experts(network("high"), network("low"), 0.9), (1, 4, 1, 2, 2), torch.Generator().manual_seed(0),
               steps=4, sigma_max=200.0, control=control)
    # rCM's wan2pt2_i2v_rcm_infer.py schedule: TrigFlow angles [atan(sigma_max), 1.5, 1.4, 1.0] mapped to RF time
    # s = sin t / (cos t + sin t); the high-noise expert while s >= boundary
    angles = [math.atan(200.0), 1.5, 1.4, 1.0]
    times = [math.sin(a) / (math.cos(a) + math.sin(a)) for a in angles]
    assert [round(s, 3) for s in times] == [0.995, 0.934, 0.853, 0.609]
    assert [t / 1000 for _, t in seen] == pytest.approx(times, abs=1e-5)
    assert [name for name, _ in seen] == ["high" if s >= 0.9 else "low" for s in times] == control.experts
    assert control.experts == ["high", "high", "low", "low"]
    # a boundary above every step's time gives the low-noise expert throughout
    control = StepControl()
    sample_rcm(Experts(network("high"), network("low"), 0.999), (1, 4, 1, 2, 2), torch.Generator(), steps=2,
               sigma_max=200.0, control=control)
    assert control.experts == ["low", "low"]
    with pytest.raises(AliceError, match="boundary must be between 0 and 1"):
        Experts(1, 2, 875)


def pair_models():
    high, low = tiny_diffusers_model(seed=11), tiny_diffusers_model(seed=12)
    return high, low, build_dit(high.state_dict(), CFG), build_dit(low.state_dict(), CFG)


def velocity(dit, ctx):
    def fn(x, t):
        with torch.no_grad():
            return dit(x, t, ctx)
    return fn


def tiny_vae() -> AutoencoderKLWan:
    vae = AutoencoderKLWan(**TINY_VAE).eval()
    randomise(vae, seed=5)
    return vae


def test_teacher_matches_diffusers_wan_pipeline_with_two_transformers():
    """Same starting latents, Euler flow matching with shift 12, boundary 0.875, guidance 4 (high) / 3 (low)."""
    high_ref, low_ref, high, low = pair_models()
    steps, shift, boundary = 6, 12.0, 0.875
    g = torch.Generator().manual_seed(3)
    ctx, neg = torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    shape = (1, 16, 2, 4, 6)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    original = scheduler.set_timesteps
    # Wan's uniform times 1 .. 1/steps before the shift, as alice's flow_matching_timesteps (which ends at 0)
    scheduler.set_timesteps = lambda n, device=None, **kw: original(
        sigmas=np.linspace(1.0, 0.0, n + 1)[:-1].tolist(), device=device)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(), scheduler=scheduler,
                       transformer=high_ref, transformer_2=low_ref, boundary_ratio=boundary)
    pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, TEXT_LEN - c.shape[1]))  # noqa: E731
    noise = seeded_noise(shape, torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe(prompt_embeds=pad(ctx), negative_prompt_embeds=pad(neg), num_inference_steps=steps,
                   guidance_scale=4.0, guidance_scale_2=3.0, latents=noise.clone(), num_frames=5, height=32, width=48,
                   output_type="latent", return_dict=False)[0]

    times = flow_matching_timesteps(steps, shift)
    expected_experts = ["high" if s >= boundary else "low" for s in times[:-1]]
    assert "high" in expected_experts and "low" in expected_experts
    control = StepControl()
    out = sample_flow_matching(  # the same seed draws the same starting noise given to diffusers above
        Experts(velocity(high, ctx), velocity(low, ctx), boundary),
        Experts(velocity(high, neg), velocity(low, neg), boundary),
        shape, torch.Generator().manual_seed(7), steps=steps, guidance=Experts(4.0, 3.0, boundary), shift=shift,
        control=control,
    )
    assert control.experts == expected_experts
    assert rel_err(out, ref) < 1e-4

    # the switch matters: one expert throughout gives another result
    with torch.no_grad():
        ref_one = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(), scheduler=scheduler,
                              transformer=high_ref)(
            prompt_embeds=pad(ctx), negative_prompt_embeds=pad(neg), num_inference_steps=steps, guidance_scale=4.0,
            latents=noise.clone(), num_frames=5, height=32, width=48, output_type="latent", return_dict=False)[0]
    assert rel_err(ref_one, ref) > 1e-2


def test_image_condition_matches_diffusers_i2v_pipeline():
    """y = [4-channel first-frame mask, VAE latent of the image + black frames] as WanImageToVideoPipeline builds it."""
    ref_vae = tiny_vae()
    vae = load_wan_vae({vae_official_key(k, TINY_VAE["num_res_blocks"]): v for k, v in ref_vae.state_dict().items()})
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ref_vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(), transformer=tiny_diffusers_model())
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        _, ref = pipe.prepare_latents(image, 1, 16, 32, 48, 9, torch.float32, torch.device("cpu"),
                                      torch.Generator().manual_seed(0))
        y = image_condition(vae, image, frames=9)
    assert y.shape == ref.shape == (1, 20, 3, 4, 6)
    assert torch.equal(y[:, :4], ref[:, :4])  # the mask
    assert (y[:, 4:] - ref[:, 4:]).abs().max() < 1e-4  # the image latent


def test_fit_image_covers_and_centre_crops():
    picture = np.zeros((60, 200, 3), np.uint8)
    picture[:, 90:110] = 255  # a white bar in the middle
    x = fit_image(picture, width=48, height=32)
    assert x.shape == (1, 3, 32, 48) and x.min() >= -1 and x.max() <= 1
    centre, edge = x[0, :, :, 20:28].mean(), x[0, :, :, :8].mean()
    assert centre > 0.5 and edge < -0.9  # scaled to height 32 (width 107), then the middle 48 columns kept
    with pytest.raises(AliceError, match="RGB picture"):
        fit_image(np.zeros((4, 4), np.uint8), 16, 16)


def euler_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' Euler flow-matching scheduler on alice's (Wan's) uniform times 1 .. 1/steps before the shift."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    original = scheduler.set_timesteps
    scheduler.set_timesteps = lambda n, device=None, **kw: original(
        sigmas=np.linspace(1.0, 0.0, n + 1)[:-1].tolist(), device=device)
    return scheduler


@pytest.mark.parametrize("variant", ["wan2.2-i2v-a14b", "wan2.1-i2v"])
def test_image_to_video_matches_diffusers_i2v_pipeline(variant):
    """The whole teacher I2V path against WanImageToVideoPipeline: Wan2.2 (two experts, boundary 0.9, no CLIP) and
    Wan2.1 (one DiT, CLIP tokens through img_emb), same start image, same starting latents."""
    from PIL import Image

    from alice_core.expert_swap import velocities

    clip = variant == "wan2.1-i2v"
    text_len = 512 if clip else TEXT_LEN  # diffusers splits CLIP tokens from text assuming 512 text tokens
    extra = dict(in_channels=36, out_channels=16, **(dict(image_dim=40, added_kv_proj_dim=48) if clip else {}))
    refs = [tiny_diffusers_model(seed=21, **extra)] + ([] if clip else [tiny_diffusers_model(seed=22, **extra)])
    cfg = WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, text_len=text_len, in_dim=36,
                       image_dim=40 if clip else None)
    ours = [build_dit(r.state_dict(), cfg) for r in refs]
    ref_vae = tiny_vae()
    vae = load_wan_vae({vae_official_key(k, TINY_VAE["num_res_blocks"]): v for k, v in ref_vae.state_dict().items()})

    g = torch.Generator().manual_seed(4)
    ctx, neg = torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    clip_tokens = torch.randn(1, 6, 40, generator=g) if clip else None
    picture = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    steps, shift, boundary, shape = 5, 5.0, 0.9, (1, 16, 3, 4, 6)
    noise = seeded_noise(shape, torch.Generator().manual_seed(8))
    pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, text_len - c.shape[1]))  # noqa: E731

    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=ref_vae, scheduler=euler_scheduler(shift), transformer=refs[0],
        transformer_2=None if clip else refs[1], boundary_ratio=None if clip else boundary,
    )
    # diffusers takes the start image and its CLIP tokens only through its image encoder: stand in for it
    pipe.encode_image = lambda image, device=None: clip_tokens
    with torch.no_grad():
        ref = pipe(image=Image.fromarray(picture), prompt_embeds=pad(ctx), negative_prompt_embeds=pad(neg),
                   num_inference_steps=steps, guidance_scale=3.5, latents=noise.clone(),
                   num_frames=9, height=32, width=48, output_type="latent", return_dict=False)[0]

    y = image_condition(vae, fit_image(picture, 48, 32), frames=9)
    dits = ours[0] if clip else Experts(ours[0], ours[1], boundary)
    control = StepControl()
    out = sample_flow_matching(velocities(dits, ctx, y, clip_tokens), velocities(dits, neg, y, clip_tokens), shape,
                               torch.Generator().manual_seed(8), steps=steps, guidance=3.5, shift=shift,
                               control=control)
    assert control.experts == ([] if clip else ["high", "high", "low", "low", "low"])
    assert rel_err(out, ref) < 1e-4


def test_ti2v_first_frame_matches_diffusers_expand_timesteps():
    """TI2V-5B: the image's clean latent as the first latent frame with timestep 0 for its tokens, against
    WanImageToVideoPipeline(expand_timesteps=True) with a 48-channel DiT and the Wan2.2 VAE."""
    from PIL import Image

    from alice_core.conditioning import FirstFrame
    from alice_core.expert_swap import velocities
    from tests.test_vae22 import TINY as TINY_VAE22, official_key as vae22_key

    ref_vae = AutoencoderKLWan(**TINY_VAE22).eval()
    randomise(ref_vae, seed=6)
    vae = load_wan_vae({vae22_key(k): v for k, v in ref_vae.state_dict().items()})
    ref_dit = tiny_diffusers_model(seed=23, in_channels=48, out_channels=48)
    dit = build_dit(ref_dit.state_dict(), WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32,
                                                       text_len=TEXT_LEN, in_dim=48, out_dim=48))
    g = torch.Generator().manual_seed(5)
    ctx, neg = torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    picture = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    steps, shape = 4, (1, 48, 3, 4, 4)
    noise = seeded_noise(shape, torch.Generator().manual_seed(9))
    pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, TEXT_LEN - c.shape[1]))  # noqa: E731
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ref_vae, scheduler=euler_scheduler(5.0),
                                   transformer=ref_dit, expand_timesteps=True)
    with torch.no_grad():
        ref = pipe(image=Image.fromarray(picture), prompt_embeds=pad(ctx), negative_prompt_embeds=pad(neg),
                   num_inference_steps=steps, guidance_scale=5.0, latents=noise.clone(), num_frames=9, height=64,
                   width=64, output_type="latent", return_dict=False)[0]
    first = FirstFrame.encode(vae, fit_image(picture, 64, 64))
    out = sample_flow_matching(velocities(dit, ctx, first_frame=first), velocities(dit, neg, first_frame=first), shape,
                               torch.Generator().manual_seed(9), steps=steps, guidance=5.0, shift=5.0)
    out = first.apply(out)
    assert torch.equal(out[:, :, :1], first.latent)
    assert rel_err(out, ref) < 1e-4


def test_wan21_i2v_with_diffusers_own_clip_image_encoder(tmp_path):
    """Wan2.1 I2V with WanImageToVideoPipeline's image_encoder + image_processor (transformers' CLIPVisionModel and
    CLIPImageProcessor) against Alice's CLIP vision loader on the same folder: the CLIP tokens themselves, then the
    sampled latents. A 32x32 picture, video and CLIP input, so neither side resizes and the two bicubic
    implementations do not enter."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from alice_core.expert_swap import velocities
    from alice_core.loading.clip_vision import load_clip_vision

    torch.manual_seed(0)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=40, intermediate_size=64, num_hidden_layers=3,
                                               num_attention_heads=2, image_size=32, patch_size=16,
                                               hidden_act="gelu")).eval()
    encoder.save_pretrained(tmp_path / "clip")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref_dit = tiny_diffusers_model(seed=24, in_channels=36, out_channels=16, image_dim=40, added_kv_proj_dim=48)
    dit = build_dit(ref_dit.state_dict(), WanDiTConfig(dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32,
                                                       text_len=512, in_dim=36, image_dim=40))
    ref_vae = tiny_vae()
    vae = load_wan_vae({vae_official_key(k, TINY_VAE["num_res_blocks"]): v for k, v in ref_vae.state_dict().items()})
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ref_vae, scheduler=euler_scheduler(3.0),
                                   transformer=ref_dit, image_encoder=encoder, image_processor=processor)
    picture = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    start = fit_image(picture, 32, 32)
    with torch.no_grad():
        ref_tokens = pipe.encode_image(Image.fromarray(picture), torch.device("cpu"))
    tokens = load_clip_vision(tmp_path / "clip").encode(start)
    assert tokens.shape == ref_tokens.shape == (1, 5, 40)  # the class token and 2x2 patches, penultimate block
    assert (tokens - ref_tokens).abs().max() < 1e-4

    g = torch.Generator().manual_seed(6)
    ctx, neg = torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    shape = (1, 16, 3, 4, 4)
    noise = seeded_noise(shape, torch.Generator().manual_seed(10))
    pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, 512 - c.shape[1]))  # noqa: E731
    with torch.no_grad():
        ref = pipe(image=Image.fromarray(picture), prompt_embeds=pad(ctx), negative_prompt_embeds=pad(neg),
                   num_inference_steps=3, guidance_scale=3.0, latents=noise.clone(), num_frames=9, height=32,
                   width=32, output_type="latent", return_dict=False)[0]
    y = image_condition(vae, start, frames=9)
    out = sample_flow_matching(velocities(dit, ctx, y, tokens), velocities(dit, neg, y, tokens), shape,
                               torch.Generator().manual_seed(10), steps=3, guidance=3.0, shift=3.0)
    assert rel_err(out, ref) < 1e-4
