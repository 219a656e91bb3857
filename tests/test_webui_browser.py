"""The app in a real browser: Debian's chromium, headless, driven by selenium.

Set ALICE_APP_SCREENSHOT=docs/app-screenshot.png to also write the README screenshot (palette PNG, small).
"""

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from alice_core.train.finetune import CHECKPOINT_NAME
from alice_core.video_io import read_video_metadata, write_video
from webui.app import EXAMPLE_PROMPT, serve
from webui.studio import MAX_FINETUNE_STEPS, START_IMAGE_NAME, Studio

from tests.bundles import random_tiny_bundle
from tests.test_clip_vision import WIDTH as CLIP_WIDTH
from tests.test_clip_vision import clip_files  # noqa: F401  (fixture: tiny CLIP vision file)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's chromium-driver, same version as the browser
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium chromium-driver"
)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1400", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, clip_files):  # noqa: F811
    models = tmp_path_factory.mktemp("models")
    random_tiny_bundle(models / "random-test")  # a second model with a teacher and a student
    # Steps slow enough to watch a run's progress and cancel it mid-way (about 0.1-0.2 s each on one CPU core).
    random_tiny_bundle(models / "slow-test", dim=384, num_layers=6, name="slow-test")
    random_tiny_bundle(models / "i2v-test", name="i2v-test", image_to_video=True)  # takes a start image
    # Wan2.1 I2V's inputs: a start image and the CLIP image embedding, from a file in the models folder's clip_vision/
    random_tiny_bundle(models / "clip-i2v-test", name="clip-i2v-test", image_dim=CLIP_WIDTH)
    (models / "clip_vision").mkdir()
    (models / "clip_vision" / "clip_vision_tiny.safetensors").write_bytes(
        (clip_files[0] / "clip_vision_tiny.safetensors").read_bytes())
    return Studio(tmp_path_factory.mktemp("out"), models_dir=models)


def served_app(studio):
    """The app on a free loopback port for the duration of a fixture: yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = serve(studio, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def url(studio):
    yield from served_app(studio)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def open_app(browser, url):
    browser.get(url)
    return WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))


def click_generate(browser):
    """Click Generate once it is clickable; a toast left by an earlier test may still cover it for a moment,
    so wait for the click to land rather than failing on the first interception."""
    button = WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#generate")))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    WebDriverWait(browser, 30, ignored_exceptions=(ElementClickInterceptedException,)).until(
        lambda _: button.click() is None
    )


def wait_for_text(browser, text, timeout=30):
    WebDriverWait(browser, timeout).until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), text))


def type_prompt(browser, url, text):
    prompt = open_app(browser, url)
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(text or Keys.DELETE)
    return prompt


def test_empty_prompt_shows_an_error(browser, url, studio):
    type_prompt(browser, url, "")
    click_generate(browser)
    wait_for_text(browser, "the prompt is empty")
    assert not list(studio.output_dir.glob("*.mp4"))


def test_invalid_size_shows_an_error(browser, url, studio):
    pipe = studio.pipeline(studio.default_label)
    multiple = pipe.size_multiples()[0]
    type_prompt(browser, url, "a red ball bouncing")
    pick(browser, "size", f"{pipe.defaults.width + multiple // 2}x{pipe.defaults.height}")
    click_generate(browser)
    wait_for_text(browser, f"width must be a multiple of {multiple}")
    assert not list(studio.output_dir.glob("*.mp4"))


def pick(browser, elem_id, text):
    """Type into a Gradio dropdown and commit the value."""
    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    WebDriverWait(browser, 30, ignored_exceptions=(ElementClickInterceptedException,)).until(
        lambda _: box.click() is None)  # a loading overlay may cover it for a moment
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.ENTER)
    browser.find_element(By.TAG_NAME, "h1").click()  # leave the dropdown so it commits the typed value


def test_switching_model_updates_presets_and_teacher_vs_student(browser, url, studio):
    open_app(browser, url)
    browser.find_element(By.CSS_SELECTOR, "#compare-panel button").click()  # open the accordion
    compare = WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.CSS_SELECTOR, "button#compare")))
    # The mode is on only for a model with both a teacher and a student; otherwise a note says why.
    both = {"rcm", "teacher"} <= set(studio.pipeline(studio.default_label).dits)
    assert compare.is_enabled() == both
    assert ("Teacher vs student is off" in browser.page_source) != both
    pick(browser, "model", "local/random-test")
    size = browser.find_element(By.CSS_SELECTOR, "#size input")
    WebDriverWait(browser, 30).until(lambda b: size.get_attribute("value") == "32x32")  # stride 4 x patch 2 model
    WebDriverWait(browser, 10).until(lambda b: compare.is_enabled())


def test_prompt_to_video_in_the_browser(browser, url, studio, tmp_path):
    type_prompt(browser, url, "a red ball bouncing")
    teacher_steps = browser.find_elements(By.CSS_SELECTOR, "#teacher-steps input[type=number]")
    if teacher_steps:  # keep the test quick: a few teacher steps instead of the default 50
        teacher_steps[0].send_keys(Keys.CONTROL, "a")
        teacher_steps[0].send_keys("4", Keys.TAB)
    click_generate(browser)
    video = WebDriverWait(browser, 60).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#output-video video[src]"))
    )
    assert video.get_attribute("src").endswith(".mp4")
    # The browser can decode it: wait until it has a frame to show (readyState >= HAVE_CURRENT_DATA).
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return arguments[0].readyState", video) >= 2)
    pipe = studio.pipeline(studio.default_label)
    assert browser.execute_script("return arguments[0].videoWidth", video) == pipe.defaults.width
    [written] = studio.output_dir.glob("*.mp4")
    meta = read_video_metadata(written)
    assert meta["prompt"] == "a red ball bouncing" and meta["model"] == pipe.name
    if meta["sampler"] == "teacher":
        assert meta["steps"] == 4  # the value typed into the slider
    wait_for_text(browser, "wall_time_s")  # the settings panel is filled in
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "app.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get("ALICE_APP_SCREENSHOT")
    if target:
        from PIL import Image

        with Image.open(shot) as image:  # a 256-colour palette keeps the README image small
            image.convert("RGB").quantize(256).save(target, optimize=True)


# ---------------------------------------------------------------- what a person sees (issue 14)
# "Seen" means what a person sees: the element shows text in a non-empty box inside the window, and what is on top
# at its centre belongs to it (or to `scope`, e.g. the layers of one progress display), so it is neither clipped
# away by a zero-height parent nor covered by another element.
SEEN = """
const e = arguments[0], scope = arguments[1] || e, r = e.getBoundingClientRect();
if (r.width < 2 || r.height < 2) return false;
const x = r.left + r.width / 2, y = r.top + r.height / 2;
if (x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) return false;
const top = document.elementFromPoint(x, y);
return top !== null && scope.contains(top);
"""
WINDOWS = [(1400, 1000), (420, 900)]


def seen(browser, element, scope=None) -> bool:
    has_content = element.text.strip() or element.tag_name in ("video", "button", "textarea", "input")
    return bool(has_content) and bool(browser.execute_script(SEEN, element, scope))


def seen_text(browser, css, text, timeout=60, scope=None):
    """Wait until an element matching css is seen (within `scope`, a css) and shows `text`; returns it."""
    def found(_):
        for element in browser.find_elements(By.CSS_SELECTOR, css):
            try:
                within = browser.find_element(By.CSS_SELECTOR, scope) if scope else None
                if text in element.text and seen(browser, element, within):
                    return element
            except StaleElementReferenceException:
                pass
        return False

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(found, f"{css} showing {text!r} never seen")


def upload_start_image(browser, path: Path, size: tuple[int, int], seed: int) -> None:
    """Save a random picture of `size` (height, width) and upload it as the start image; wait until it is seen."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    upload = browser.find_element(By.CSS_SELECTOR, "#start-image")
    upload.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda b: any(b.execute_script(SEEN, i, upload)
                                                   for i in b.find_elements(By.CSS_SELECTOR, "#start-image img")))


def generate_new_video(browser, studio, timeout: float) -> Path:
    """Click Generate, wait for "Done:" in the status, and return the one video file it added."""
    before = set(studio.output_dir.glob("*.mp4"))
    click_generate(browser)
    seen_text(browser, "#generate-status", "Done:", timeout=timeout)
    [made] = set(studio.output_dir.glob("*.mp4")) - before
    return made


def sized(browser, url, size):
    browser.set_window_size(*size)
    return open_app(browser, url)


def click(browser, element):
    """As a person does: scroll it into view, then click (waiting out a toast that may cover it)."""
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    WebDriverWait(browser, 30, ignored_exceptions=(ElementClickInterceptedException,)).until(
        lambda _: element.click() is None)


def choose_teacher(browser, steps):
    label = next(e for e in browser.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == "teacher")
    click(browser, label)
    box = browser.find_element(By.CSS_SELECTOR, "#teacher-steps input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(steps), Keys.TAB)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = folder / f"clip{i}.mp4"
        write_video(rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), path, fps=8)
        paths.append(str(path))
    return paths


def open_finetune(browser, clips, lora_name, teacher_steps, student_steps):
    tab = next(e for e in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if e.text == "Finetune")
    click(browser, tab)
    pick(browser, "finetune-model", "local/random-test")
    browser.find_element(By.CSS_SELECTOR, "#finetune-videos input[type=file]").send_keys("\n".join(clips))
    seen_text(browser, "#finetune-videos", "clip1")  # the file list shows the uploads
    browser.find_element(By.CSS_SELECTOR, "#finetune-captions textarea").send_keys("a ball rolling left")
    name = browser.find_element(By.CSS_SELECTOR, "#finetune-lora-name textarea, #finetune-lora-name input")
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys(lora_name)
    click(browser, next(e for e in browser.find_elements(By.CSS_SELECTOR, "button") if "Training settings" in e.text))
    for elem_id, value in (("finetune-teacher-steps", teacher_steps), ("finetune-student-steps", student_steps)):
        box = WebDriverWait(browser, 10).until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, f"#{elem_id} input[type=number]")))
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)


def test_the_first_view_has_a_real_prompt_and_generate_in_view(browser, url):
    prompt = sized(browser, url, (1400, 1000))
    assert prompt.get_attribute("value") == EXAMPLE_PROMPT and seen(browser, prompt)
    assert browser.execute_script("return scrollY") == 0
    generate = browser.find_element(By.CSS_SELECTOR, "#generate")
    assert generate.text == "Generate" and seen(browser, generate)  # no scrolling needed


@pytest.mark.parametrize("size", WINDOWS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_generation_progress_and_cancel_are_seen(browser, url, studio, size):
    sized(browser, url, size)
    pick(browser, "model", "local/slow-test")
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#model-info"), "slow-test:"))
    choose_teacher(browser, 100)
    before = sorted(studio.output_dir.glob("*.mp4"))
    click(browser, browser.find_element(By.CSS_SELECTOR, "#generate"))
    seen_text(browser, "#generate-status .progress-level-inner", "teacher step")
    seen_text(browser, "#generate-status .progress-text", "/100", scope="#generate-status")
    browser.find_element(By.CSS_SELECTOR, "#cancel").click()  # next to Generate: in view without scrolling
    seen_text(browser, "#generate-status", "Cancelled. No new video was made")
    WebDriverWait(browser, 60).until(lambda _: not studio.busy())
    assert sorted(studio.output_dir.glob("*.mp4")) == before


# The image as the browser decoded it: [width, height, brightest - darkest red value], or null before it is loaded.
IMAGE_PIXELS = """
const img = arguments[0];
if (!img.complete || img.naturalWidth === 0) return null;
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(img, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let low = 255, high = 0;
for (let i = 0; i < data.length; i += 4) { low = Math.min(low, data[i]); high = Math.max(high, data[i]); }
return [canvas.width, canvas.height, high - low];
"""


def seen_preview(browser):
    """The live preview image once it is seen with pixels: (its src, [width, height, value range])."""
    def found(_):
        for img in browser.find_elements(By.CSS_SELECTOR, "#live-preview img"):
            try:
                pixels = browser.execute_script(IMAGE_PIXELS, img)
                if pixels and pixels[2] > 0 and browser.execute_script(SEEN, img):  # an img has no text
                    return img.get_attribute("src"), pixels
            except StaleElementReferenceException:
                pass
        return False

    return WebDriverWait(browser, 60, poll_frequency=0.1).until(found, "no preview image seen")


def test_live_preview_is_seen_while_sampling_then_the_video_replaces_it(browser, url, studio):
    sized(browser, url, (1400, 1000))
    pick(browser, "model", "local/slow-test")
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#model-info"), "slow-test:"))
    choose_teacher(browser, 30)
    click(browser, browser.find_element(By.CSS_SELECTOR, "#generate"))
    first, pixels = seen_preview(browser)
    assert pixels[:2] == [32, 32]  # alice-tiny-like bundles preview at full size (the exact decode)
    seen_text(browser, "#generate-status .progress-level-inner", "teacher step")  # the progress bar stays
    WebDriverWait(browser, 60, poll_frequency=0.1).until(lambda _: seen_preview(browser)[0] != first,
                                                         "the preview never changed")  # a new image per step
    seen_text(browser, "#generate-status", "Done:")
    video = WebDriverWait(browser, 30).until(ec.visibility_of_element_located(
        (By.CSS_SELECTOR, "#output-video video[src]")))
    assert seen(browser, video)
    assert not [i for i in browser.find_elements(By.CSS_SELECTOR, "#live-preview img") if i.is_displayed()]


@pytest.mark.parametrize("size", WINDOWS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_finetune_progress_with_the_loss_meaning_and_cancel_are_seen(browser, url, studio, clips, size):
    sized(browser, url, size)
    name = f"long{size[0]}"
    open_finetune(browser, clips, name, teacher_steps=MAX_FINETUNE_STEPS, student_steps=2)
    click(browser, browser.find_element(By.CSS_SELECTOR, "#finetune-start"))
    progress = seen_text(browser, "#finetune-status .progress-level-inner", "teacher LoRA step", timeout=120)
    assert "flow-matching loss" in progress.text
    seen_text(browser, "#finetune-status .progress-text", "steps |", scope="#finetune-status")  # "2/5.0k steps | 3s"
    click(browser, browser.find_element(By.CSS_SELECTOR, "#finetune-cancel"))
    status = seen_text(browser, "#finetune-status", "Cancelled at teacher LoRA step")
    assert "press Start finetune again with the same videos, captions and settings to resume" in status.text
    WebDriverWait(browser, 60).until(lambda _: not studio.busy())
    assert (studio.models_dir / "finetune-work" / name / CHECKPOINT_NAME).is_file()


def test_an_error_keeps_the_last_video_and_stays_readable_and_captions_show_the_prompt(browser, url, studio):
    sized(browser, url, (1400, 1000))
    click_generate(browser)  # the prefilled prompt, the bundled model's 4 steps
    seen_text(browser, "#generate-status", "Done:")
    video = WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#output-video video[src]")))
    source = video.get_attribute("src")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                           browser.find_element(By.CSS_SELECTOR, "#gallery"))  # below the form: scroll to it
    caption = seen_text(browser, "#gallery *", EXAMPLE_PROMPT[:20])  # the caption starts with the prompt
    assert caption.text.startswith(EXAMPLE_PROMPT[:20])

    click(browser, browser.find_element(By.CSS_SELECTOR, "#random-seed input"))  # untick: the seed field counts
    seed = browser.find_element(By.CSS_SELECTOR, "#seed input")
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys("-1", Keys.TAB)
    click_generate(browser)
    message = "Seed must be a whole number from 0 to 2147483647, got -1"
    seen_text(browser, "#generate-status", message)
    time.sleep(12)  # longer than a toast stays: the message is still there
    seen_text(browser, "#generate-status", message, timeout=1)
    assert browser.find_element(By.CSS_SELECTOR, "#output-video video").get_attribute("src") == source
    for elem_id in ("output-video", "seed", "gallery"):  # no error badge over the results or the seed
        badges = browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} .error")
        assert not [b for b in badges if b.is_displayed()], elem_id
    click(browser, seed)  # nothing covers the seed field: it takes the click and the typing
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys("7")
    assert seed.get_attribute("value") == "7"


def test_a_finetune_is_one_lora_entry_and_zero_steps_are_refused(browser, url, studio, clips):
    sized(browser, url, (1400, 1000))
    open_finetune(browser, clips, "pair", teacher_steps=0, student_steps=0)
    click(browser, browser.find_element(By.CSS_SELECTOR, "#finetune-start"))
    seen_text(browser, "#finetune-status", "Teacher steps and Student steps are both 0, so nothing would be trained")

    for elem_id, value in (("finetune-teacher-steps", 1), ("finetune-student-steps", 1)):
        box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)
    click(browser, browser.find_element(By.CSS_SELECTOR, "#finetune-start"))
    saved = seen_text(browser, "#finetune-status", "Saved pair", timeout=180)
    assert "flow-matching loss" in saved.text and "rCM loss" in saved.text and "->" in saved.text

    open_app(browser, url)  # a fresh page lists the app's LoRAs
    box = browser.find_element(By.CSS_SELECTOR, "#lora input")
    click(browser, box)
    options = WebDriverWait(browser, 10).until(lambda b: [o.text for o in b.find_elements(By.CSS_SELECTOR, "[role=option]")])
    assert "pair.safetensors" in options and not any("teacher" in o for o in options), options


def start_image_shown(browser) -> bool:
    """The upload is on the page and displayed (Gradio leaves a hidden component out of the page)."""
    return any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, "#start-image"))


def test_the_start_image_upload_shows_for_an_image_to_video_model_and_reaches_the_video(browser, url, studio,
                                                                                        tmp_path):
    from PIL import Image

    sized(browser, url, (1400, 1000))
    WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#model input")))
    assert not start_image_shown(browser)  # the bundled text-to-video model takes no start image
    pick(browser, "model", "local/i2v-test")
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#model-info"), "i2v-test:"))
    info = browser.find_element(By.CSS_SELECTOR, "#model-info")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", info)  # the upload pushed it down
    seen_text(browser, "#model-info", "image to video (upload a start image)")
    label = browser.find_element(By.CSS_SELECTOR, "#start-image")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", label)
    seen_text(browser, "#start-image", "Start image (this model needs one)")
    click_generate(browser)  # without a picture: the status says what to do
    seen_text(browser, "#generate-status", "i2v-test is an image-to-video model: upload a start image")
    before = set(studio.output_dir.glob("*.mp4"))

    picture = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(picture)
    label.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(picture))
    preview = WebDriverWait(browser, 30).until(lambda b: next(
        (i for i in b.find_elements(By.CSS_SELECTOR, "#start-image img") if b.execute_script(SEEN, i, label)),
        False))
    assert browser.execute_script("return arguments[0].naturalWidth", preview) == 64  # the picture itself shows
    click_generate(browser)
    seen_text(browser, "#generate-status", "Done:", timeout=120)
    [made] = set(studio.output_dir.glob("*.mp4")) - before
    assert read_video_metadata(made)["image"] == START_IMAGE_NAME and read_video_metadata(made)["model"] == "i2v-test"
    video = browser.find_element(By.CSS_SELECTOR, "#output-video video")
    assert video.get_attribute("src").endswith(made.name) and seen(browser, video)

    pick(browser, "model", "local/random-test")  # a text-to-video model again: the upload goes away
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#model-info"), "random-test:"))
    WebDriverWait(browser, 30).until(lambda _: not start_image_shown(browser))


def clip_vision_shown(browser) -> bool:
    return any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, "#clip-vision"))


def choose_model(browser, label):
    pick(browser, "model", label)
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#model-info"),
                                                                      f"{label.removeprefix('local/')}:"))


def test_the_clip_vision_choice_shows_for_a_wan21_i2v_model_and_its_file_makes_the_video(browser, url, studio,
                                                                                         tmp_path):
    sized(browser, url, (1400, 1000))
    WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#model input")))
    assert not clip_vision_shown(browser)  # text-to-video: no CLIP vision choice
    choose_model(browser, "local/i2v-test")  # image-to-video without CLIP (as Wan2.2 I2V): the upload only
    WebDriverWait(browser, 30).until(lambda _: start_image_shown(browser))
    assert not clip_vision_shown(browser)

    choose_model(browser, "local/clip-i2v-test")
    WebDriverWait(browser, 30).until(lambda _: clip_vision_shown(browser) and start_image_shown(browser))
    box = browser.find_element(By.CSS_SELECTOR, "#clip-vision input")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    seen_text(browser, "#clip-vision", "CLIP vision")
    assert box.get_attribute("value") == "clip_vision_tiny.safetensors" and seen(browser, box)
    click(browser, box)  # its list holds the file the app found
    options = WebDriverWait(browser, 10).until(
        lambda b: [o.text.replace("✓", "").strip() for o in b.find_elements(By.CSS_SELECTOR, "[role=option]")
                   if o.is_displayed()])  # the chosen one is ticked
    assert "clip_vision_tiny.safetensors" in options, options
    browser.find_element(By.TAG_NAME, "h1").click()

    upload_start_image(browser, tmp_path / "start.png", (48, 64), seed=2)
    made = generate_new_video(browser, studio, timeout=120)
    assert read_video_metadata(made)["model"] == "clip-i2v-test" and read_video_metadata(made)["image"] == START_IMAGE_NAME
    assert studio.pipeline("local/clip-i2v-test").image_encoder.width == CLIP_WIDTH  # the chosen file was read
    video = browser.find_element(By.CSS_SELECTOR, "#output-video video")
    assert video.get_attribute("src").endswith(made.name) and seen(browser, video)

    choose_model(browser, "local/random-test")  # text-to-video again: both go away
    WebDriverWait(browser, 30).until(lambda _: not clip_vision_shown(browser) and not start_image_shown(browser))
