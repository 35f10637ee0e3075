"""A real headless Chromium for the report tests, driven by Selenium through chromedriver.

Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` package (``make setup``
installs them). Without them the tests fail with a line that says so: a skipped browser test would
let a broken page through.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import pytest

# As root (CI, containers) Chromium needs --no-sandbox; the rest keeps it off the network and
# quiet: no updates, no sync, no first-run pages, a profile of its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _program(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"{names[0]} is not installed; `make setup` installs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)",
        pytrace=False,
    )


@contextlib.contextmanager
def headless_chromium():
    """A Selenium WebDriver of a fresh headless Chromium; quit on exit."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "selenium is not installed; `make setup` installs it (requirements-pinned.txt: selenium==4.51.0)",
            pytrace=False,
        )
    browser = _program("chromium", "chromium-browser")
    driver_path = _program("chromedriver")
    with tempfile.TemporaryDirectory(prefix="raflora-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()
