"""The web app: Studio rules in plain Python, and the running Gradio app driven through gradio_client."""

import re
import shutil
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

from alice_core.cli.app import add_parser as add_app_parser
from alice_core.errors import AliceError
from alice_core.pipeline import GenerationSettings
from alice_core.sampling import GenerationCancelled
from alice_core.video_io import read_video, read_video_metadata
from webui.app import serve
from webui.feedback import ErrorNotes
from webui.models import frame_presets, parse_size, size_presets
from webui.studio import Job, Studio

from tests.bundles import random_tiny_bundle

PROMPT = "a red ball bouncing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    random_tiny_bundle(folder / "random-test")  # teacher + student: the only way to exercise "teacher vs student"
    teacher_only = random_tiny_bundle(folder / "teacher-only")
    teacher_only.dits = {"teacher": teacher_only.dits["teacher"]}
    teacher_only.write(replace=True)
    return folder


@pytest.fixture(scope="module")
def studio(tmp_path_factory, models_dir):
    return Studio(tmp_path_factory.mktemp("out"), models_dir=models_dir)


@pytest.fixture(scope="module")
def url(studio):
    port = free_port()
    demo = serve(studio, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def client(url, tmp_path):
    return Client(url, verbose=False, download_files=str(tmp_path))


def videos_in(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".mp4")


# -- Studio (no server) ---------------------------------------------------------------------------------------------
def test_models_are_listed_by_name_from_the_allow_listed_folder(studio):
    labels = [c.label for c in studio.choices()]
    assert labels[0] == "alice-tiny" and {"local/random-test", "local/teacher-only"} <= set(labels)
    assert studio.default_label == "alice-tiny"
    for bad in ("../random-test", str(studio.models_dir / "random-test"), "/etc/passwd", "random-test"):
        with pytest.raises(AliceError, match="unknown model"):
            studio.choice(bad)


def test_presets_follow_the_model(studio):
    rand = studio.pipeline("local/random-test")  # stride 4 x patch 2 -> multiples of 8, default 32x32 / 9 frames
    assert size_presets(rand) == ["32x32", "16x16", "64x32", "32x64"]
    assert frame_presets(rand) == [5, 9, 17]
    assert parse_size(" 64 x 32 ", rand) == (64, 32)
    with pytest.raises(AliceError, match="multiple of 8.*32x32"):
        parse_size("36x32", rand)
    with pytest.raises(AliceError, match="at most 64x64"):
        parse_size("128x128", rand)
    with pytest.raises(AliceError, match="WIDTHxHEIGHT"):
        parse_size("64", rand)
    # The bundled model: whatever it holds, its presets are valid for it and start at its defaults.
    tiny = studio.pipeline("alice-tiny")
    mult_w, mult_h = tiny.size_multiples()
    sizes = [parse_size(p, tiny) for p in size_presets(tiny)]
    assert sizes[0] == (tiny.defaults.width, tiny.defaults.height)
    assert all(w % mult_w == 0 and h % mult_h == 0 for w, h in sizes)
    stride = tiny.autoencoder.temporal_stride
    assert tiny.defaults.frames in frame_presets(tiny)
    assert all((f - 1) % stride == 0 for f in frame_presets(tiny))


def test_compare_runs_student_and_teacher_with_the_same_seed(studio):
    job = Job(model="local/random-test", prompt=PROMPT, seed=5)
    seen = []
    student, teacher = studio.compare(job, 2, 3, progress=lambda done, total, label: seen.append((done, total, label)))
    assert (student.video.settings.sampler, student.video.settings.steps) == ("rcm", 2)
    assert (teacher.video.settings.sampler, teacher.video.settings.steps) == ("teacher", 3)
    assert student.video.settings.seed == teacher.video.settings.seed == 5
    assert seen == [(1, 5, "student"), (2, 5, "student"), (3, 5, "teacher"), (4, 5, "teacher"), (5, 5, "teacher")]
    assert student.wall_s > 0 and teacher.wall_s > 0 and student.path != teacher.path
    with pytest.raises(AliceError, match="needs a model with both a teacher and a 4-step student"):
        studio.compare(Job(model="local/teacher-only", prompt=PROMPT), 4, 4)


def test_cancel_between_steps_writes_nothing(studio):
    before = videos_in(studio.output_dir)
    steps = []
    with pytest.raises(GenerationCancelled):
        studio.generate(Job(model="local/random-test", prompt=PROMPT, sampler="teacher", steps=20),
                        progress=lambda done, total, label: steps.append(done), should_cancel=lambda: len(steps) >= 2)
    assert steps == [1, 2] and videos_in(studio.output_dir) == before and not studio.busy()


def test_each_step_previews_its_x0_estimate_and_the_last_is_the_video(studio):
    images = []
    made = studio.generate(Job(model="local/random-test", prompt=PROMPT, sampler="rcm", steps=3), preview=images.append)
    assert len(images) == 3 and all(i.dtype == np.uint8 and i.shape == (32, 32, 3) for i in images)
    assert not np.array_equal(images[0], images[-1])  # the estimate changes from step to step
    # rCM's last x0 estimate is the result: its preview is the first frame of the video's middle latent frame.
    pipe = studio.pipeline("local/random-test")
    mid = made.video.latents.shape[2] // 2
    frame = pipe.decode(made.video.latents)[1 + (mid - 1) * pipe.autoencoder.temporal_stride]
    assert np.abs(frame.astype(int) - images[-1]).max() <= 1  # rounding


def test_a_lora_is_recorded_and_one_that_matches_nothing_is_an_error(studio):
    from safetensors.torch import save_file

    from tests.test_nodes import write_lora

    studio.loras_dir.mkdir(parents=True, exist_ok=True)
    write_lora(studio.loras_dir / "fits.safetensors", dim=32, seed=4)
    save_file({"text_model.layer.0.lora_A.weight": torch.zeros(2, 4)}, str(studio.loras_dir / "other.safetensors"))
    made = studio.generate(Job(model="local/random-test", prompt=PROMPT, sampler="rcm", steps=1, lora="fits.safetensors",
                               lora_strength=0.5))
    assert (read_video_metadata(made.path)["lora"], read_video_metadata(made.path)["lora_strength"]) == (
        "fits.safetensors", 0.5)
    before = sorted(studio.output_dir.iterdir())
    with pytest.raises(AliceError, match="LoRA other.safetensors: none of its 1 keys fit 'random-test'"):
        studio.generate(Job(model="local/random-test", prompt=PROMPT, sampler="rcm", steps=1, lora="other.safetensors"))
    assert sorted(studio.output_dir.iterdir()) == before


def test_catalogue_download_only_on_request(tmp_path, monkeypatch):
    """The real catalogue is listed (nothing downloaded, no network); only Download fetches, through alice_core.hub."""
    import alice_core.hub as hub

    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "alice_home"))  # empty: no catalogue file is present
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = Studio(tmp_path / "out", models_dir=tmp_path / "models")
    entry = st.choice("hub/rcm-wan2.1-t2v-1.3b")
    assert entry.kind == "catalogue" and not entry.available
    assert "hub/rcm-wan2.1-t2v-1.3b-comfy" not in [c.label for c in st.choices()]  # ComfyUI-only files
    with pytest.raises(AliceError, match="not downloaded yet; click Download"):
        st.generate(Job(model="hub/rcm-wan2.1-t2v-1.3b", prompt=PROMPT))
    # Offline, the Download button's error names each missing file, its URL and its folder.
    with pytest.raises(AliceError, match=r"rCM_Wan2\.1_T2V_1\.3B_480p\.pt.*huggingface\.co/worstcoder/rcm-Wan"):
        st.download("hub/rcm-wan2.1-t2v-1.3b")
    calls = []
    fetched = {"dit": tmp_path / "dit.pt", "vae": tmp_path / "vae.pth", "text_encoder": tmp_path / "umt5"}

    def fake_resolve(name, download=False, progress=None):
        calls.append((name, download))
        if not download and ("rcm-wan2.1-t2v-1.3b", True) not in calls:
            raise AliceError("missing")
        return fetched

    monkeypatch.setattr(hub, "resolve_catalogue_model", fake_resolve)
    st.download("hub/rcm-wan2.1-t2v-1.3b")
    assert ("rcm-wan2.1-t2v-1.3b", True) in calls
    after = st.choice("hub/rcm-wan2.1-t2v-1.3b")
    assert after.available and after.source == str(fetched["dit"]) and after.vae == str(fetched["vae"])


def test_cli_parser_defaults_to_loopback_without_share():
    import argparse

    parser = argparse.ArgumentParser()
    add_app_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["app"])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, None)
    args = parser.parse_args(["app", "--port", "9000", "--share", "--model", "local/x"])
    assert (args.port, args.share, args.model) == (9000, True, "local/x")


# -- the running app ------------------------------------------------------------------------------------------------
def test_generate_through_gradio_client_matches_the_library(studio, client, tmp_path):
    pipe = studio.pipeline("alice-tiny")
    width, height, frame_count, fps = (getattr(pipe.defaults, k) for k in ("width", "height", "frames", "fps"))
    path, settings, seed, gallery, status = client.predict(
        model="alice-tiny", sampler="teacher", teacher_steps=4, prompt=PROMPT, seed=3, randomize_seed=False,
        size=f"{width}x{height}", frames=frame_count, fps=fps, api_name="/generate",
    )
    frames, decoded_fps = read_video(path)
    assert frames.shape == (frame_count, height, width, 3) and decoded_fps == pytest.approx(fps)
    meta = read_video_metadata(path)
    assert (meta["prompt"], meta["seed"], meta["steps"], meta["sampler"]) == (PROMPT, 3, 4, "teacher")
    assert seed == 3 and settings["file"] in videos_in(studio.output_dir) and settings["wall_time_s"] > 0
    assert gallery[0]["caption"].startswith(f"{PROMPT} (teacher 4 steps, seed 3, ")  # the prompt first
    assert status.startswith(f"**Done:** {settings['file']} in ")
    # The same video the library makes for these settings: encoding is deterministic, so the decoded frames of
    # the library's own file must match exactly, and another seed's must not.
    for other_seed, should_match in ((3, True), (4, False)):
        video = pipe.generate(GenerationSettings(PROMPT, seed=other_seed, sampler="teacher", steps=4))
        reference = read_video(pipe.save(video, tmp_path / f"library_{other_seed}.mp4"))[0]
        assert np.array_equal(frames, reference) == should_match


def test_bad_input_is_an_error_message(studio, client):
    pipe = studio.pipeline("alice-tiny")
    mult_w, _ = pipe.size_multiples()
    stride = pipe.autoencoder.temporal_stride
    before = videos_in(studio.output_dir)
    cases = [
        ({"prompt": "   "}, "the prompt is empty"),
        ({"size": f"{pipe.defaults.width + mult_w // 2}x{pipe.defaults.height}"},
         f"width must be a multiple of {mult_w}"),
        ({"frames": pipe.defaults.frames + 1}, f"frames must be {stride}k\\+1"),
        ({"model": "../../etc/passwd"}, "not in the list of choices"),
        ({"seed": -1, "randomize_seed": False}, "Seed must be a whole number from 0 to 2147483647, got -1"),
    ]
    for change, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(**{"prompt": PROMPT, "teacher_steps": 2, **change}, api_name="/generate")
    with pytest.raises(AppError, match="needs a model with both"):
        client.predict(model="local/teacher-only", prompt=PROMPT, size="32x32", frames=9, api_name="/compare")
    assert videos_in(studio.output_dir) == before


def test_error_messages_name_no_server_paths(studio, models_dir):
    broken = models_dir / "broken"
    broken.mkdir()
    (broken / "model.json").write_text('{"name": "broken", "dits": {"teacher": "missing.safetensors"}}')
    try:
        with pytest.raises(AliceError) as caught:
            studio.pipeline("local/broken")
        assert str(models_dir) in str(caught.value)  # the library names the file for the operator's log
        shown = ErrorNotes(studio).public(str(caught.value))
        assert str(models_dir) not in shown and "broken/" in shown, shown
    finally:
        shutil.rmtree(broken)


def test_compare_through_the_app(client):
    student, teacher, settings, _seed, gallery, _status = client.predict(
        model="local/random-test", prompt=PROMPT, size="32x32", frames=9, student_steps=2, teacher_steps=3,
        api_name="/compare",
    )
    # Side by side, each labelled with its wall time.
    assert re.fullmatch(r"Student, 2 steps: \d+\.\d\d s", student["label"])
    assert re.fullmatch(r"Teacher, 3 steps: \d+\.\d\d s", teacher["label"])
    assert read_video(student["value"])[0].shape == read_video(teacher["value"])[0].shape == (9, 32, 32, 3)
    assert (settings["student"]["steps"], settings["teacher"]["steps"]) == (2, 3)
    assert settings["student"]["seed"] == settings["teacher"]["seed"]
    assert [g["caption"].split(", seed")[0] for g in gallery[:2]] == [f"{PROMPT} (teacher 3 steps", f"{PROMPT} (rcm 2 steps"]


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_queue_shows_position_and_cancel_stops_jobs(studio, url, tmp_path):
    first, second = (Client(url, verbose=False, download_files=str(tmp_path)) for _ in range(2))
    before = videos_in(studio.output_dir)
    job = {"model": "local/random-test", "sampler": "teacher", "size": "32x32", "frames": 9, "api_name": "/generate"}
    with studio.device_slot():  # the device is busy: the first job waits for it, the second waits in the queue
        waiting = first.submit(prompt="a red ball", teacher_steps=2, **job)
        wait_for(lambda: (waiting.status().progress_data or [None])[0] is not None)
        assert waiting.status().progress_data[0].desc == "waiting for the device"
        queued = second.submit(prompt="a blue square", teacher_steps=100, **job)
        wait_for(lambda: queued.status().code == Status.IN_QUEUE)
        assert queued.status().rank == 0  # first in line
        first.predict(api_name="/cancel")  # cancelled before its first step
    assert waiting.result(timeout=30)[0] == {"__type__": "update"}  # no video
    # The queued job now runs; its progress bar counts sampler steps, and Cancel stops it mid-way.
    wait_for(lambda: queued.status().progress_data and queued.status().progress_data[0].desc == "teacher step")
    step = queued.status().progress_data[0]
    assert (step.length, step.unit) == (100, "steps") and step.index < 100
    second.predict(api_name="/cancel")
    assert queued.result(timeout=30)[0] == {"__type__": "update"}
    assert videos_in(studio.output_dir) == before and not studio.busy()


def test_only_the_apps_own_files_are_served(url, studio, models_dir):
    for path in ("/etc/passwd", __file__, str(models_dir / "random-test" / "model.json")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={path}")
        assert err.value.code == 403


def test_a_run_that_does_not_fit_in_memory_is_refused_in_the_apps_words(studio, monkeypatch):
    import alice_core.limits as limits

    monkeypatch.setattr(limits, "available_bytes", lambda device: 64 * 1024)  # 64 KB free
    before = videos_in(studio.output_dir)
    with pytest.raises(AliceError, match="lower the size .* or the frame count") as err:
        studio.generate(Job(model="local/random-test", prompt=PROMPT))
    assert "--" not in str(err.value) and videos_in(studio.output_dir) == before
