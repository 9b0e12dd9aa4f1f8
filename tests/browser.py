"""Headless Chromium for the web console tests, driven by Selenium through Debian's chromedriver.

:func:`chromium` yields a WebDriver with a fresh profile under the test's tmp_path; every
wait goes through :func:`wait_until` (WebDriverWait with a deadline, never a sleep).
:func:`screenshot` saves PNGs into the test's artifact directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 900)
PHONE = (375, 740)
T = TypeVar("T")

needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver",
)


@contextlib.contextmanager
def chromium(profile_dir: Path, size: tuple[int, int] = DESKTOP) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile in ``profile_dir``; quit on exit."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile_dir}",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    profile_dir.mkdir(parents=True, exist_ok=True)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def wait_until(driver: WebDriver, condition: Callable[[WebDriver], T], timeout_s: float, what: str) -> T:
    """Poll ``condition(driver)`` until it returns something truthy (WebDriverWait's polling)."""
    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(condition, f"waiting for {what}")


def screenshot(driver: WebDriver, artifacts: Path, name: str) -> Path:
    """Save the current viewport as ``artifacts/<name>.png``."""
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
    return path


def publish(shot: Path, repo_path: Path) -> None:
    """Copy ``shot`` into the repository (docs/) when DFS_UPDATE_SCREENSHOT=1 asks for it."""
    if os.environ.get("DFS_UPDATE_SCREENSHOT") == "1":
        repo_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, repo_path)
