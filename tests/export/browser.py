"""The search page of `itr-distill serve` driven in headless Chromium (selenium): the browser test's steps, and
the README's screenshot: `python -m tests.export.browser http://127.0.0.1:8000 --query "a red circle" --out docs/serve.png`.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them where it can) and `pip install selenium`.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SIZE = (1000, 700)


def chromium_missing() -> str | None:
    """What is missing for a headless browser here, or None."""
    missing = [what for what, ok in (("the selenium package (pip install selenium)", importlib.util.find_spec("selenium")),
                                     ("chromium (apt-get install chromium)", shutil.which("chromium")),
                                     ("chromedriver (apt-get install chromium-driver)", shutil.which("chromedriver")))
               if not ok]
    return ", ".join(missing) or None


@contextmanager
def headless_chromium(size: tuple[int, int] = SIZE) -> Iterator[Any]:
    """A headless Chromium with the system's chromedriver (selenium's own driver download is never tried)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--force-device-scale-factor=1", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the page's viewport, not the window, is `size`
                           {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


def _wait_done(driver: Any, element_id: str, timeout: float) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("id", element_id).get_attribute("data-state") in ("done", "error"))
    return driver.find_element("id", element_id).get_attribute("data-state")


def search_text(driver: Any, url: str, query: str, k: int | None = None, timeout: float = 30) -> list[str]:
    """Open the page, type `query` (and k), press Search; the ids of the images shown, in order."""
    driver.get(url)
    box = driver.find_element("id", "query")
    box.send_keys(query)
    if k is not None:
        driver.find_element("id", "k").clear()
        driver.find_element("id", "k").send_keys(str(k))
    driver.find_element("id", "search").click()
    if _wait_done(driver, "results", timeout) != "done":
        raise AssertionError(f"the page shows an error: {driver.find_element('id', 'text-status').text}")
    _wait_images(driver, timeout)
    return [fig.get_attribute("data-id") for fig in driver.find_elements("css selector", "#results .hit")]


def _wait_images(driver: Any, timeout: float) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every((img) => img.complete && img.naturalWidth > 0)"))


def search_image(driver: Any, image: str | Path, timeout: float = 30) -> list[str]:
    """Choose `image` in the page's file input; the captions shown, in order."""
    driver.find_element("id", "image-file").send_keys(str(Path(image).resolve()))
    if _wait_done(driver, "captions", timeout) != "done":
        raise AssertionError(f"the page shows an error: {driver.find_element('id', 'image-status').text}")
    return [li.get_attribute("data-id") for li in driver.find_elements("css selector", "#captions li")]


def save_screenshot(driver: Any, path: str | Path) -> Path:
    """The page as a 256-colour PNG (a third of the size of the browser's, for the README)."""
    import io

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url", help="a running `itr-distill serve`, e.g. http://127.0.0.1:8000")
    ap.add_argument("--query", required=True)
    ap.add_argument("-k", type=int)
    ap.add_argument("--image", help="also search with this image (needs a server with --captions)")
    ap.add_argument("--out", required=True, help="PNG screenshot of the page with its results")
    args = ap.parse_args(argv)
    missing = chromium_missing()
    if missing:
        sys.exit(f"missing: {missing}")
    with headless_chromium() as driver:
        print("images:", search_text(driver, args.url, args.query, args.k))
        if args.image:
            print("captions:", search_image(driver, args.image))
        save_screenshot(driver, args.out)
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
