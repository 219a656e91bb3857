"""The app's teacher guidance per Wan2.2 expert: a two-expert catalogue model (the TurboWan2.2 I2V A14B pair, as
small random files where `alice download` puts them) takes a guidance for each expert, which reaches the library's
per-expert guidance (the same video as the library makes with them) and the video's metadata; the low-noise field
is offered only for a pair, and bad values are named in the app's words. Through Studio and the running app."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from alice_core import hub
from alice_core.errors import AliceError
from alice_core.models.config import WanVAEConfig
from alice_core.models.vae import WanVAE
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.video_io import read_video_metadata
from webui.app import serve
from webui.sampler_inputs import sampler_updates
from webui.studio import Job, Studio

from tests.bundles import random_tiny_bundle
from tests.test_catalogue_models import catalogue_target, place_wan_text_encoder
from tests.test_expert_pairs import official_state
from tests.test_formats import write_variant
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture: umT5 folder)
from tests.test_webui import free_port

PAIR = "turbowan2.2-i2v-a14b-720p"
LABEL = f"hub/{PAIR}"
PROMPT = "a cat walks along a wall"
SMALL = dict(size="48x32", frames=5)


@pytest.fixture(scope="module")
def pair_home(tmp_path_factory, tiny_umt5):  # noqa: F811
    """$ALICE_HOME with the catalogue pair's files (TurboDiffusion .pth experts, Wan2.1 VAE, umT5), and a models
    folder with a one-DiT bundle."""
    root = tmp_path_factory.mktemp("pair_home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ALICE_HOME", str(root / "alice"))
        catalogue = hub.load_catalogue()
        files = catalogue.models[PAIR].roles
        for seed, role in ((1, "dit"), (2, "dit_low")):
            path, _ = write_variant(official_state(seed), "turbodiffusion", root / role)
            path.rename(catalogue_target(catalogue, files[role]))
        torch.manual_seed(0)
        torch.save(WanVAE(WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).state_dict(),
                   catalogue_target(catalogue, files["vae"]))
        place_wan_text_encoder(catalogue, PAIR, tiny_umt5)
        random_tiny_bundle(root / "models" / "random-test")
        Image.fromarray(picture()).save(root / "start.png")
        yield root


@pytest.fixture(scope="module")
def studio(pair_home):
    return Studio(pair_home / "out", models_dir=pair_home / "models")


def picture() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def teacher_job(**fields) -> Job:
    return Job(model=LABEL, prompt=PROMPT, negative_prompt="blur", seed=2, sampler="teacher", steps=3,
               image=picture(), **SMALL, **fields)


def test_each_expert_gets_its_guidance_as_the_library_gives_it(studio):
    made = studio.generate(teacher_job(guidance=5.0, guidance_low=2.0))
    pipe = studio.pipeline(LABEL)
    want = pipe(GenerationSettings(PROMPT, negative_prompt="blur", seed=2, sampler="teacher", steps=3, width=48,
                                   height=32, frames=5, guidance=5.0, guidance_low=2.0, image="start"),
                output_type="latent", image=picture()).latents
    torch.testing.assert_close(made.video.latents, want, atol=1e-5, rtol=1e-5)
    meta = read_video_metadata(made.path)
    assert (float(meta["guidance"]), float(meta["guidance_low"])) == (5.0, 2.0)
    assert set(meta["experts"].split(",")) == {"high", "low"}  # both experts ran, each with its own value
    other = studio.generate(teacher_job(guidance=5.0, guidance_low=4.0))
    assert (other.video.latents - made.video.latents).abs().max() > 1e-3  # the low-noise expert's own value counts


def test_empty_fields_keep_wans_preset_and_the_student_ignores_them(studio):
    preset = read_video_metadata(studio.generate(teacher_job()).path)
    assert (float(preset["guidance"]), float(preset["guidance_low"]), float(preset["shift"])) == (3.5, 3.5, 5.0)
    student = Job(model=LABEL, prompt=PROMPT, seed=2, sampler="rcm", steps=2, image=picture(), **SMALL)
    plain = studio.generate(student)
    fields = studio.generate(Job(**{**vars(student), "guidance": 9.0, "guidance_low": 8.0}))
    torch.testing.assert_close(fields.video.latents, plain.video.latents)
    assert float(read_video_metadata(fields.path)["guidance"]) == 3.5  # not a value the student never used


def test_bad_guidance_is_named_in_the_apps_words(studio):
    with pytest.raises(AliceError, match=r"^Teacher guidance, low-noise expert is for two-expert \(Wan2.2 A14B\) "
                                         r"models; random-test has one DiT: leave it empty$"):
        studio.generate(Job(model="local/random-test", prompt=PROMPT, sampler="teacher", guidance_low=3.0))
    with pytest.raises(AliceError, match=r"^Teacher guidance, high-noise expert must be a number from 1 to 30, "
                                         r"got 0.5$"):
        studio.generate(teacher_job(guidance=0.5))
    with pytest.raises(AliceError, match=r"^Teacher guidance, low-noise expert must be a number from 1 to 30, "
                                         r"got nan$"):
        studio.generate(teacher_job(guidance_low=float("nan")))
    with pytest.raises(AliceError, match=r"^Teacher guidance must be a number from 1 to 30, got 31.0$"):
        studio.generate(Job(model="local/random-test", prompt=PROMPT, sampler="teacher", guidance=31.0))


def test_the_low_noise_field_is_offered_only_for_a_pair(studio):
    *_, guidance, low = sampler_updates(studio.pipeline(LABEL))
    assert (guidance["label"], guidance["value"], low["visible"], low["value"]) == (
        "Teacher guidance, high-noise expert", 3.5, True, 3.5)
    *_, guidance, low = sampler_updates(studio.pipeline("local/random-test"))
    assert (guidance["label"], guidance["value"], low["visible"], low["value"]) == ("Teacher guidance", 3.0, False,
                                                                                   None)


def test_per_expert_guidance_through_the_running_app(studio, pair_home, tmp_path):
    port = free_port()
    demo = serve(studio, port=port, block=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        path, settings, *_ = client.predict(
            model=LABEL, sampler="teacher", teacher_steps=2, prompt=PROMPT, **SMALL, randomize_seed=False,
            start_image=handle_file(str(pair_home / "start.png")), guidance=6.0, guidance_low=2.5,
            api_name="/generate")
        assert (settings["guidance"], settings["guidance_low"]) == (6.0, 2.5)
        assert float(read_video_metadata(path)["guidance_low"]) == 2.5
        with pytest.raises(AppError, match="random-test has one DiT: leave it empty"):
            client.predict(model="local/random-test", sampler="teacher", teacher_steps=2, prompt=PROMPT,
                           guidance_low=2.5, api_name="/generate")
    finally:
        demo.close()
