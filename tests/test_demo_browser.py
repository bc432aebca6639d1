"""The demo page in a real headless browser (Debian's chromium and chromedriver, through selenium): a click
generates an image that appears in the page, a preview appears before it, Stop stops, and no request leaves
127.0.0.1. Reports the time from the click to the first preview on screen (not asserted)."""

from __future__ import annotations

import json
import os
import re
import time
from urllib.parse import urlparse

import pytest

from condiff.demo.screenshot import CHROMEDRIVER, CHROMIUM, chromium, free_port

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
        "apt-get install chromium chromium-driver",
        allow_module_level=True,
    )
pytest.importorskip("gradio")
pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Records, in the page's own clock, the click on Generate and the first time each image output shows a picture.
WATCH = """
const view = arguments[0];
window.__demo = {};
const mark = (name) => { if (!(name in window.__demo)) window.__demo[name] = performance.now(); };
document.getElementById(view + '-run').addEventListener('click', () => mark('click'), true);
const seen = () => {
  for (const part of ['preview', 'result']) {
    const img = document.querySelector('#' + view + '-' + part + ' img');
    if (img && img.getAttribute('src')) mark(part);
  }
};
new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true});
"""


@pytest.fixture(scope="module")
def page_url():
    import torch

    from condiff.demo.app import build_app, serve
    from condiff.demo.models import Models

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    models = Models()
    models.warm("class-conditional")  # as `condiff demo` does before serving
    app = build_app(models)
    url = serve(app, "127.0.0.1", free_port(), block=False)  # uvicorn in a thread of this process
    yield url
    app.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser(page_url, tmp_path_factory):
    driver = chromium(str(tmp_path_factory.mktemp("chromium-profile")), log_network=True)  # a fresh profile
    driver.requested = []  # every URL the page asked for, from the performance log
    driver.get(page_url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "class-conditional-run"))
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            driver.requested.append(message["params"]["request"]["url"])
    return driver.requested


def set_number(driver, elem_id: str, value: int) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.clear()
    field.send_keys(str(value))
    field.send_keys("\t")  # the page takes the value on blur


def status(driver, view: str = "class-conditional") -> str:
    return driver.find_element(By.ID, f"{view}-status").text


def test_click_shows_previews_then_the_image(browser, capsys):
    set_number(browser, "class-conditional-num_images", 2)
    browser.execute_script(WATCH, "class-conditional")
    browser.find_element(By.ID, "class-conditional-run").click()
    WebDriverWait(browser, 60).until(lambda d: "result" in d.execute_script("return window.__demo"))
    times = browser.execute_script("return window.__demo")
    assert "Done" in status(browser)
    assert times["click"] <= times["preview"] < times["result"], times
    src = browser.find_element(By.CSS_SELECTOR, "#class-conditional-result img").get_attribute("src")
    assert urlparse(src).hostname in LOCAL_HOSTS, src
    shown = browser.execute_script("const i = document.querySelector('#class-conditional-result img');"
                                   "return [i.complete, i.naturalWidth, i.naturalHeight];")  # fmt: skip
    assert shown == [True, 2 * 28 * 4, 28 * 4]  # the 2-image grid at the page's 4x zoom, loaded
    with capsys.disabled():
        print(f"\n[demo] click to first preview on screen: {times['preview'] - times['click']:.0f} ms; "
              f"to the final image: {times['result'] - times['click']:.0f} ms (2 images, 14 steps)")  # fmt: skip


def test_stop_stops_a_long_run(browser):
    set_number(browser, "class-conditional-steps", 500)
    set_number(browser, "class-conditional-num_images", 1)
    browser.find_element(By.ID, "class-conditional-run").click()
    WebDriverWait(browser, 60).until(lambda d: status(d).startswith("Step"))
    browser.find_element(By.ID, "class-conditional-stop").click()
    WebDriverWait(browser, 60).until(lambda d: "Stopped" in status(d))
    done = int(re.search(r"after (\d+) of 500 steps", status(browser)).group(1))
    assert 1 <= done < 500
    assert not browser.find_elements(By.CSS_SELECTOR, "#class-conditional-result img")  # no final image
    time.sleep(0.5)
    assert "Stopped" in status(browser)  # and nothing ran on after it


def test_no_request_leaves_localhost(browser):
    urls = requested_urls(browser)
    assert any(urlparse(u).hostname in LOCAL_HOSTS for u in urls)  # the log did record the page's requests
    # data: and blob: are in the page; chrome:// are Chromium's own built-in pages (its start page), not the network
    local = ("data:", "blob:", "chrome:", "chrome-untrusted:")
    outside = [u for u in urls if not (u.startswith(local) or urlparse(u).hostname in LOCAL_HOSTS)]
    assert not outside, outside
