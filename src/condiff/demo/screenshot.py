"""A screenshot of the running demo page (the README's `docs/images/demo.png`), taken by Debian's headless chromium
through selenium: `python -m condiff.demo.screenshot docs/images/demo.png`. The browser tests start chromium with the
same flags."""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# offline: without the background-networking flags chromium keeps calling hosts outside this machine
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(profile: str, size: tuple[int, int] = (1280, 1400), log_network: bool = False) -> Any:
    """A headless chromium driven by chromedriver, with a fresh profile folder and, if asked, its network log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    if log_network:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def take(out: Path, size: tuple[int, int] = (1280, 1150), colors: int = 64) -> None:
    """Serve the demo, click Generate on the class-conditional tab, save the page when it is done."""
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from condiff.demo.app import build_app, serve
    from condiff.demo.models import Models

    models = Models()
    models.warm("class-conditional")
    app = build_app(models)
    url = serve(app, "127.0.0.1", free_port(), block=False)
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile, size)
        try:
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "class-conditional-run"))
            driver.find_element(By.ID, "class-conditional-run").click()
            WebDriverWait(driver, 60).until(lambda d: "Done" in d.find_element(By.ID, "class-conditional-status").text)
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
            app.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors)  # a small PNG for the repository
    image.save(out, optimize=True)
    print(f"wrote {out} ({image.width}x{image.height}, {out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG file to write")
    take(parser.parse_args().out)
