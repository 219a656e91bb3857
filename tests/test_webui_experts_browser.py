"""The per-expert teacher guidance as a person sees it in a real browser (Debian's chromium, headless, selenium):
the low-noise expert's field appears, labelled and at Wan's preset, only for a two-expert model, and the values
typed there reach the video."""


import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from alice_core.video_io import read_video_metadata

from tests.test_webui_browser import (  # noqa: F401  (browser: fixture)
    CHROMIUM, SEEN, browser, choose_teacher, generate_new_video, pick, seen_text, served_app, sized, upload_start_image,
)
from tests.test_webui_experts import LABEL, pair_home, studio  # noqa: F401  (fixtures: the pair in $ALICE_HOME)
from tests.test_text_encoders import tiny_umt5  # noqa: F401  (fixture used by pair_home)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium chromium-driver"
)


@pytest.fixture(scope="module")
def url(studio):  # noqa: F811
    yield from served_app(studio)


def low_field_shown(browser) -> bool:  # noqa: F811
    return any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, "#guidance-low"))


def field(browser, elem_id):  # noqa: F811
    """The number box of field `elem_id`, scrolled into view (found again: a model change re-renders it)."""
    def found(b):
        box = b.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
        b.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
        return box

    return WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(found)


def label_seen(browser, elem_id, text):  # noqa: F811
    field(browser, elem_id)
    return seen_text(browser, f"#{elem_id}", text)


def test_the_low_noise_guidance_shows_for_a_pair_and_reaches_the_video(browser, url, studio, tmp_path):  # noqa: F811
    sized(browser, url, (1400, 1000))
    WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#guidance input")))
    label_seen(browser, "guidance", "Teacher guidance")  # alice-tiny: one DiT, one value
    assert not low_field_shown(browser)

    pick(browser, "model", LABEL)
    WebDriverWait(browser, 60).until(lambda _: low_field_shown(browser))
    label_seen(browser, "guidance-low", "Teacher guidance, low-noise expert")
    low = field(browser, "guidance-low")
    assert low.get_attribute("value") == "3.5" and browser.execute_script(SEEN, low)  # Wan2.2 I2V-A14B's preset
    label_seen(browser, "guidance", "Teacher guidance, high-noise expert")
    low = field(browser, "guidance-low")
    low.send_keys(Keys.CONTROL, "a")
    low.send_keys("2.5", Keys.TAB)
    high = field(browser, "guidance")
    high.send_keys(Keys.CONTROL, "a")
    high.send_keys("6", Keys.TAB)
    choose_teacher(browser, 2)
    pick(browser, "size", "48x32")
    pick(browser, "frames", "5")
    upload_start_image(browser, tmp_path / "start.png", (40, 56), seed=1)
    made = generate_new_video(browser, studio, timeout=180)
    meta = read_video_metadata(made)
    assert (meta["sampler"], float(meta["guidance"]), float(meta["guidance_low"])) == ("teacher", 6.0, 2.5)
    seen_text(browser, "#generate-status", made.name)

    pick(browser, "model", "local/random-test")  # one DiT again: the low-noise field goes away
    WebDriverWait(browser, 60).until(lambda _: not low_field_shown(browser))
    label_seen(browser, "guidance", "Teacher guidance")
    assert "high-noise" not in browser.find_element(By.CSS_SELECTOR, "#guidance").text
