"""A `lmdeploy serve gradio` process and a headless Debian chromium driven by Selenium."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from .server import free_port


def chrome_driver():
    """A headless chromium; skipped only where it cannot be installed (no apt-get)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        if shutil.which("apt-get") is None:
            pytest.skip("no chromium/chromedriver and no apt-get to install them")
        pytest.fail(
            "chromium or chromedriver is missing: run scripts/setup.sh, which installs them"
        )
    options = Options()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,960",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


@contextlib.contextmanager
def gradio_server(*args: str, startup_timeout: float = 150.0) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lmdeploy.infrastructure.entrypoint",
        "serve",
        "gradio",
        *args,
        "--server-name",
        "127.0.0.1",
        "--server-port",
        str(port),
    ]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            assert process.poll() is None, f"gradio exited with {process.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the web UI did not start in time"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
