"""The app in a real browser: Debian's chromium, headless, driven by selenium.

Set ALICE_APP_SCREENSHOT=docs/app-screenshot.png to also write the README screenshot (palette PNG, small).
"""

import os
import socket
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import ElementClickInterceptedException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from alice_core.video_io import read_video_metadata
from webui.app import serve
from webui.models import size_multiples
from webui.studio import Studio

from tests.bundles import random_tiny_bundle

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's chromium-driver, same version as the browser
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium chromium-driver"
)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1400", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    random_tiny_bundle(models / "random-test")  # a second model with a teacher and a student
    return Studio(tmp_path_factory.mktemp("out"), models_dir=models)


@pytest.fixture(scope="module")
def url(studio):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = serve(studio, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


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


def test_empty_prompt_shows_an_error(browser, url, studio):
    open_app(browser, url)
    click_generate(browser)
    wait_for_text(browser, "the prompt is empty")
    assert not list(studio.output_dir.glob("*.mp4"))


def test_invalid_size_shows_an_error(browser, url, studio):
    pipe = studio.pipeline(studio.default_label)
    multiple = size_multiples(pipe)[0]
    open_app(browser, url).send_keys("a red ball bouncing")
    pick(browser, "size", f"{pipe.defaults['width'] + multiple // 2}x{pipe.defaults['height']}")
    click_generate(browser)
    wait_for_text(browser, f"width must be a multiple of {multiple}")
    assert not list(studio.output_dir.glob("*.mp4"))


def pick(browser, elem_id, text):
    """Type into a Gradio dropdown and commit the value."""
    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
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
    prompt = open_app(browser, url)
    prompt.send_keys("a red ball bouncing")
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
    assert browser.execute_script("return arguments[0].videoWidth", video) == pipe.defaults["width"]
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
