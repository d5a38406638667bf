"""A real browser for page tests: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver (scripts/system-packages.txt). Selenium is given both binaries, so its
own manager never tries to download a browser or a driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Headless, no sandbox (root in a container), and nothing that talks to the internet.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1300",
)


def require_chromium() -> None:
    """Skip loudly (fail in CI) unless Debian's chromium and chromedriver are installed."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if not missing:
        return
    message = (
        f"{', '.join(missing)} not installed (Debian's chromium and chromium-driver; "
        "scripts/install_system_packages.sh, as root, installs them): the page was NOT tested "
        "in a browser"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    print(f"\n!!! {message}", file=sys.stderr)
    pytest.skip(message)


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with a profile of its own, quit afterwards."""
    require_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()
