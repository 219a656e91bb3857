"""The app's Finetune tab and LoRA choice: Studio rules in plain Python, then the running app via gradio_client."""

import json
import shutil

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from safetensors import safe_open

from alice_core.errors import AliceError
from alice_core.loading.lora import LORA_METADATA_KEY, apply_lora
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.train.finetune import CHECKPOINT_NAME, FinetuneCancelled, FinetuneConfig
from alice_core.video_io import read_video, read_video_metadata, write_video
from webui.studio import MAX_FINETUNE_STEPS, FinetuneJob, Job, Studio

from tests.bundles import random_tiny_bundle
from tests.test_webui import url, wait_for  # noqa: F401  (url: the running app for this module's studio)

MODEL = "local/random-test"
CAPTIONS = "a ball rolling left\na ball rolling right"
QUICK = dict(rank=2, alpha=4.0, teacher_steps=2, student_steps=2, teacher_lr=1e-3, student_lr=1e-3, batch_size=1,
             seed=0, checkpoint_every=2)


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two 9-frame 32x32 clips (the random bundle's size), as a user would upload them."""
    folder = tmp_path_factory.mktemp("clips")
    t, y, x = np.meshgrid(np.arange(9.0), np.arange(32.0), np.arange(32.0), indexing="ij")
    frames = (np.stack([(x + 2 * t) % 32 / 32, y / 32, (x + y) / 64], axis=-1) * 255).astype(np.uint8)
    return [str(write_video(frames, folder / "left.mp4", fps=8)),
            str(write_video(frames[:, :, ::-1].copy(), folder / "right.mp4", fps=8))]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    random_tiny_bundle(models / "random-test")
    return Studio(tmp_path_factory.mktemp("out"), models_dir=models)


def job(videos, name: str, captions: str = CAPTIONS, restart: bool = False, **settings) -> FinetuneJob:
    return FinetuneJob(model=MODEL, videos=videos, captions=captions, lora_name=name,
                       config=FinetuneConfig(**{**QUICK, **settings}), restart=restart)


def q_weight(dit) -> torch.Tensor:
    return dit.blocks[0].self_attn.q.weight.detach().clone()


# -- Studio (no server) ---------------------------------------------------------------------------------------------
def test_finetune_saves_loras_that_generation_applies_to_their_network(studio, videos, tmp_path):
    seen = []
    result = studio.finetune(job(videos, "style"), progress=lambda *report: seen.append(report[:3]))
    assert seen == [("teacher", 1, 2), ("teacher", 2, 2), ("student", 1, 2), ("student", 2, 2)]
    assert (result.student_lora.name, result.teacher_lora.name) == ("style.safetensors", "style.teacher.safetensors")
    assert result.student_lora.parent == studio.loras_dir == studio.models_dir / "loras"
    assert studio.lora_names() == ["style.safetensors"]  # one entry per finetune: the app pairs the two files
    assert not (studio.models_dir / "finetune-work" / "style").exists()  # finished: no checkpoint left behind
    assert MODEL in [c.label for c in studio.choices()]  # the LoRA folder is not mistaken for a model bundle
    with safe_open(str(result.student_lora), framework="pt") as f:
        meta = json.loads(f.metadata()[LORA_METADATA_KEY])
    assert meta["applies_to"] == "rcm" and meta["sample_prompts"] == CAPTIONS.splitlines()  # one caption per video

    base = studio.pipeline(MODEL)
    before = {s: q_weight(d) for s, d in base.dits.items()}
    video_job = Job(model=MODEL, prompt="a ball rolling left", seed=3, sampler="rcm", steps=2, lora="style.safetensors",
                    lora_strength=2.0)
    made = studio.generate(video_job)
    assert made.summary()["lora"] == "style.safetensors" and made.summary()["lora_strength"] == 2.0
    assert read_video_metadata(made.path)["lora"] == "style.safetensors"
    for sampler, weight in before.items():  # the cached pipeline itself stays the base model
        torch.testing.assert_close(q_weight(base.dits[sampler]), weight, rtol=0, atol=0)
    # The same video as the library makes with the LoRA applied to the student; another video without it.
    frames = read_video(made.path)[0]
    for strength, should_match in ((2.0, True), (0.0, False)):
        pipe = load_pipeline(str(studio.models_dir / "random-test"))
        apply_lora(pipe.dits["rcm"], result.student_lora, strength)
        video = pipe.generate(GenerationSettings("a ball rolling left", seed=3, sampler="rcm", steps=2))
        reference = read_video(pipe.save(video, tmp_path / f"library_{strength}.mp4"))[0]
        assert np.array_equal(frames, reference) == should_match

    # The same entry on the teacher sampler applies the finetune's teacher file to the teacher.
    made = studio.generate(Job(model=MODEL, prompt="a ball", seed=4, sampler="teacher", steps=2, lora="style.safetensors"))
    pipe = load_pipeline(str(studio.models_dir / "random-test"))
    apply_lora(pipe.dits["teacher"], result.teacher_lora)
    video = pipe.generate(GenerationSettings("a ball", seed=4, sampler="teacher", steps=2))
    assert np.array_equal(read_video(made.path)[0], read_video(pipe.save(video, tmp_path / "teacher.mp4"))[0])
    shutil.copyfile(result.student_lora, studio.loras_dir / "solo.safetensors")  # a student LoRA without its pair
    with pytest.raises(AliceError, match=r"LoRA solo.safetensors is for the 4-step student \(rcm\) and has no part "
                                         "for the teacher; generate with the 4-step student's sampler"):
        studio.generate(Job(model=MODEL, prompt="a ball", sampler="teacher", steps=2, lora="solo.safetensors"))
    (studio.loras_dir / "solo.safetensors").unlink()
    for bad in ("../random-test/dit_rcm.safetensors", "missing.safetensors", "finetune-work",
                "style.teacher.safetensors"):
        with pytest.raises(AliceError, match="unknown LoRA"):
            studio.generate(Job(model=MODEL, prompt="a ball", sampler="rcm", steps=2, lora=bad))
    with pytest.raises(AliceError, match="a LoRA named style.safetensors exists; choose another name, or tick "
                                         "'Start over'"):
        studio.finetune(job(videos, "style"))


def test_cancel_keeps_a_checkpoint_and_the_same_job_resumes(studio, videos):
    steps = []
    with pytest.raises(FinetuneCancelled):
        studio.finetune(job(videos, "resumed", teacher_steps=3), progress=lambda *r: steps.append(r[:2]),
                        should_cancel=lambda: len(steps) >= 1)
    assert steps == [("teacher", 1)] and not studio.busy()
    assert (studio.models_dir / "finetune-work" / "resumed" / CHECKPOINT_NAME).is_file()
    assert "resumed.safetensors" not in studio.lora_names()

    with pytest.raises(AliceError, match="LoRA name 'resumed' has an unfinished run with other videos, captions, "
                                         "settings or model; tick 'Start over'"):
        studio.finetune(job(videos, "resumed", captions="another caption", teacher_steps=3))
    steps.clear()
    studio.finetune(job(videos, "resumed", teacher_steps=3), progress=lambda *r: steps.append(r[:2]))
    assert steps == [("teacher", 2), ("teacher", 3), ("student", 1), ("student", 2)]  # resumed after step 1
    steps.clear()
    studio.finetune(job(videos, "resumed", teacher_steps=1, restart=True), progress=lambda *r: steps.append(r[:2]))
    assert steps[0] == ("teacher", 1)  # started over, replacing the LoRA


def test_finetune_input_errors_name_the_fix(studio, videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    cases = [
        (job([], "x"), "no videos uploaded"),
        (job(videos, "x", captions=" \n "), "the caption is empty"),
        (job(videos, "x", captions="one\ntwo\nthree"), "3 caption lines for 2 videos"),
        (job([str(broken)], "x", captions="a ball"), "could not read .*broken.mp4 as a video"),
        (job(videos, "x", teacher_steps=MAX_FINETUNE_STEPS + 1), f"teacher steps is {MAX_FINETUNE_STEPS + 1}; this "
                                                                  f"app allows at most {MAX_FINETUNE_STEPS}"),
        (job(videos, "x", teacher_steps=0, student_steps=0), "Teacher steps and Student steps are both 0, so nothing "
                                                             "would be trained"),
    ]
    cases += [(job(videos, bad), "must be a plain file name") for bad in ("../x", "sub/x", ".hidden", "", "x.")]
    hub = FinetuneJob(model="hub/rcm-wan2.1-t2v-1.3b", videos=videos, captions="c", lora_name="x",
                      config=FinetuneConfig())
    cases.append((hub, "model 'hub/rcm-wan2.1-t2v-1.3b' cannot be finetuned here; pick a model bundle"))
    for bad_job, message in cases:
        with pytest.raises(AliceError, match=message):
            studio.finetune(bad_job)
    assert "x.safetensors" not in studio.lora_names() and not (studio.models_dir / "finetune-work" / "x").exists()


# -- the running app ------------------------------------------------------------------------------------------------


def finetune_args(videos, name: str, **settings) -> dict:
    return {"model": MODEL, "videos": [handle_file(v) for v in videos], "captions": CAPTIONS, "lora_name": name,
            **QUICK, **settings, "api_name": "/finetune"}


def test_finetune_tab_trains_a_lora_that_the_generate_tab_offers(url, studio, videos, tmp_path):
    client = Client(url, verbose=False, download_files=str(tmp_path))
    status, loras = client.predict(**finetune_args(videos, "app_style"))
    assert status.startswith("**Saved app_style** in ")
    assert "teacher LoRA loss " in status and "flow-matching loss" in status and "rCM loss" in status
    assert str(studio.models_dir) not in status  # no server paths shown
    choices = {value for _, value in loras["choices"]}
    assert "app_style.safetensors" in choices and "app_style.teacher.safetensors" not in choices
    _, settings, _, _, _ = client.predict(model=MODEL, sampler="rcm", student_steps=2, prompt="a ball", seed=1,
                                       randomize_seed=False, lora="app_style.safetensors", lora_strength=1.5,
                                       api_name="/generate")
    assert (settings["lora"], settings["lora_strength"]) == ("app_style.safetensors", 1.5)
    with pytest.raises(AppError, match="unknown LoRA"):
        client.predict(model=MODEL, prompt="a ball", lora="../random-test/dit_rcm.safetensors", api_name="/generate")
    with pytest.raises(AppError, match="3 caption lines for 2 videos"):
        client.predict(**{**finetune_args(videos, "other"), "captions": "a\nb\nc"})


def progress_text(submitted) -> str:
    data = submitted.status().progress_data
    return (data[0].desc or "") if data else ""


def test_finetune_shows_stage_step_and_loss_holds_the_device_and_cancels(url, studio, videos, tmp_path):
    trainer, painter = (Client(url, verbose=False, download_files=str(tmp_path)) for _ in range(2))
    running = trainer.submit(**finetune_args(videos, "long", teacher_steps=MAX_FINETUNE_STEPS))
    wait_for(lambda: "teacher LoRA step" in progress_text(running))
    step = running.status().progress_data[0]
    assert (step.length, step.unit) == (MAX_FINETUNE_STEPS + 2, "steps") and 0 < step.index < MAX_FINETUNE_STEPS
    assert f"/{MAX_FINETUNE_STEPS}, loss " in step.desc
    waiting = painter.submit(model=MODEL, sampler="rcm", student_steps=2, prompt="a ball", api_name="/generate")
    wait_for(lambda: waiting.status().code == Status.IN_QUEUE)  # the finetune holds the device's one queue slot
    assert waiting.status().rank == 0
    trainer.predict(api_name="/cancel_finetune")
    status, _ = running.result(timeout=30)
    assert status.startswith("**Cancelled** at teacher LoRA step ") and "to resume" in status
    assert (studio.models_dir / "finetune-work" / "long" / CHECKPOINT_NAME).is_file()
    assert "long.safetensors" not in studio.lora_names()
    assert waiting.result(timeout=60)[1]["steps"] == 2  # the device is free again: the generation ran
    assert not studio.busy()
