"""A real prediction server in its own process and Debian's headless Chromium driven by Selenium.

The browser comes from scripts/chromium.sh (TOMAAT_TEST_CHROMEDRIVER names its driver); without it the
browser tests are skipped, as the PostgreSQL ones are without TOMAAT_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.environ.get("TOMAAT_TEST_CHROMEDRIVER", "")


def needs_browser():
    return pytest.mark.skipif(
        not DRIVER, reason="TOMAAT_TEST_CHROMEDRIVER is unset (export it from scripts/chromium.sh)"
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`tomaat serve TARGET` on a free loopback port, plain HTTP, with its own TMPDIR."""

    def __init__(self, target: str, folder, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "tomaat",
            "serve",
            target,
            "--port",
            str(self.port),
            "--listen-address",
            "127.0.0.1",
        ]
        command += options
        env = {**os.environ, "TMPDIR": str(folder)}
        self.process = subprocess.Popen(
            [*command, "--no-tls"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"{self.url} did not come up")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=30)[0]


def chrome(webgl: bool = True, size=(1400, 900)):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    arguments = ["--headless=new", "--no-sandbox", f"--window-size={size[0]},{size[1]}"]
    arguments += ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"] if webgl else ["--disable-webgl"]
    for argument in arguments:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def hook(driver, name: str, index: int = 0):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{name}"]')[index]


def status_when(driver, done, timeout: float = 30.0) -> str:
    """The status line once done(text) holds, or AssertionError with the last text after timeout."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = hook(driver, "status").text
        if done(text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"the status line stayed at {text!r}")


def finished(text: str) -> bool:
    return text.endswith("done") or text.startswith("error:")


def blob_bytes(driver, href: str) -> bytes:
    """What a link the page made (a blob: URL) holds, read inside the page."""
    script = """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buffer) => {
            const bytes = new Uint8Array(buffer); let text = "";
            for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
            done(btoa(text));
        });
    """
    return base64.b64decode(driver.execute_async_script(script, href))
