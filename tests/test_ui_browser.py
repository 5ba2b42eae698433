"""`farm ui` in a real headless Chromium (Selenium + /usr/bin/chromedriver).

The page must follow a running job by itself (no reload), play a finished job's video and
show a failed job's error as text. CI installs the browser with .ci/install-browser; set
FARM_UI_SCREENSHOT=docs/ui.png to save the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ui import (FAILED, FINISHED, RUNNING, ServerThread, add_finished,  # noqa: E402
                     make_output_root, write_png, write_status)

from farm.ui.app import create_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,860",
                  "--autoplay-policy=no-user-gesture-required"]

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    reason = "needs /usr/bin/chromium and /usr/bin/chromedriver (run .ci/install-browser)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

POLL_SECONDS = 1.0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-browser")
    root = make_output_root(base / "renders")
    here = os.getcwd()
    os.chdir(base)  # the page shows the root as given, like `farm ui` run next to renders/
    try:
        app = create_app(Path("renders"), poll_seconds=POLL_SECONDS)
    finally:
        os.chdir(here)
    with ServerThread(app) as server:
        yield root, server.url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str, seconds: float = 8 * POLL_SECONDS):
    """Wait until condition(driver) is truthy; the failure names what did not happen."""
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.1).until(
            lambda d: condition(d))
    except Exception as exc:  # TimeoutException: say which expectation failed
        raise AssertionError(f"timed out waiting for {what}") from exc


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def shown_file(driver, css: str) -> str | None:
    """The output-root file an element's src points at, once the element is visible and
    (for images) loaded; else None."""
    elements = driver.find_elements(By.CSS_SELECTOR, css)
    if not elements or not elements[0].is_displayed():
        return None
    loaded = driver.execute_script(
        "const e = arguments[0]; return e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0);",
        elements[0])
    src = elements[0].get_attribute("src")
    if not loaded or not src:
        return None
    return unquote(urlsplit(src).path).removeprefix("/files/")


def test_running_job_updates_by_itself(site, browser):
    root, url = site
    browser.get(f"{url}/job/{RUNNING}")
    wait_for(browser, lambda d: text(d, "done") == "3" and text(d, "total") == "6",
             "progress 3 of 6")
    assert text(browser, "job-state") == "running"
    assert text(browser, "eta") == "10s"
    assert "#3 step 4/10" in text(browser, "current")
    wait_for(browser, lambda d: shown_file(d, "#latest") == f"{RUNNING}/frames/000002.png",
             "the latest finished frame 2")
    wait_for(browser, lambda d: shown_file(d, "#previews img") == f"{RUNNING}/previews/000003.png",
             "the preview of frame 3")
    assert browser.find_element(By.ID, "dashboard").get_attribute("href") == \
        "http://127.0.0.1:8265/"
    assert text(browser, "root") == "renders"
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#jobs .name")]
    assert names == ["smoke", "smoke", "stills", "stills"]

    browser.execute_script("window.notReloaded = true;")
    run = root / RUNNING
    add_finished(run, "frame", 3)
    write_png(run / "previews" / "000004.png", 41)
    write_status(run, done=4, eta_seconds=65.0, current=[{"index": 4, "step": 2, "steps": 10}],
                 dashboard_url="http://127.0.0.1:8265")
    wait_for(browser, lambda d: text(d, "done") == "4", "progress 4 of 6")
    wait_for(browser, lambda d: shown_file(d, "#latest") == f"{RUNNING}/frames/000003.png",
             "the new latest frame 3")
    wait_for(browser, lambda d: shown_file(d, "#previews img") == f"{RUNNING}/previews/000004.png",
             "the preview of frame 4")
    assert text(browser, "eta") == "1m 05s"
    assert browser.execute_script("return window.notReloaded === true;")

    screenshot = os.environ.get("FARM_UI_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(Path(screenshot).resolve()))


def test_finished_job_plays_its_video(site, browser):
    _, url = site
    browser.get(f"{url}/job/{FINISHED}")
    wait_for(browser, lambda d: shown_file(d, "#video") == f"{FINISHED}/video.mp4",
             "the <video> of video.mp4")
    assert browser.find_element(By.ID, "video").tag_name == "video"
    assert text(browser, "job-state") == "succeeded"
    assert text(browser, "done") == "6"
    # the browser fetched and decoded the mp4 (served with ranges and the right type)
    wait_for(browser, lambda d: d.execute_script(
        "const v = document.getElementById('video'); return v.readyState >= 1 && "
        "v.videoWidth === 64;"), "the video's metadata")


def test_failed_job_shows_its_error_as_text(site, browser):
    _, url = site
    browser.get(f"{url}/job/{FAILED}")
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed(), "the error")
    assert text(browser, "error") == "2 images failed: CUDA out of memory <b>not bold</b>"
    assert browser.find_elements(By.CSS_SELECTOR, "#error b") == []
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#errors li")]
    assert errors == [f"#{index} (RenderActor(big on node-2)) CUDA out of memory. "
                      f"Tried to allocate 2.00 GiB" for index in (2, 3)]
    wait_for(browser, lambda d: d.execute_script(
        "const images = [...document.querySelectorAll('#gallery img')];"
        "return images.length === 2 && images.every((i) => i.complete && i.naturalWidth === 64);"),
        "the two finished images")
    assert text(browser, "job-state") == "failed"
    assert not browser.find_element(By.ID, "video-box").is_displayed()
    logs = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
            and "favicon" not in entry["message"]]
    assert logs == [], json.dumps(logs)
