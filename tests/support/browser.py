"""Headless Debian chromium driven by Selenium through Debian's chromedriver: no browser downloads."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from . import ci

# Debian packages the browser tests need; tests/support/system_deps.py installs them.
DEBIAN_PACKAGES: Final[tuple[str, ...]] = ("chromium", "chromium-driver")

CHROMIUM: Final = "/usr/bin/chromium"
CHROMEDRIVER: Final = "/usr/bin/chromedriver"

# Quiet, offline, reproducible: no GPU, no sandbox (root in a container), nothing phoning home.
FLAGS: Final[tuple[str, ...]] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1200,900",
)


def require_chromium() -> None:
    """Skip when chromium or chromedriver is missing; fail instead on CI, which must install them."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(path) or shutil.which(path))]
    if not missing:
        return
    ci.missing(f"{', '.join(missing)} not installed (apt-get install -y {' '.join(DEBIAN_PACKAGES)})",
               "CI must run tests/support/system_deps.py")


@contextmanager
def chromium(profile: Path, downloads: Path) -> Iterator[object]:
    """A headless chromium (a selenium WebDriver) with a fresh profile, saving downloads to `downloads`."""
    require_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
