"""The page under test: `flux2-studio` as a child process, and Debian's headless Chromium driven by Playwright.

A missing browser fails the test with one line saying how to install it; it is never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli_runs import REPO_ROOT, wait_until
from tests.support.rlimits import limited

CHROMIUM_NAMES = ("chromium", "chromium-browser")
INSTALL_HINT = "the browser tests need Debian's Chromium: run `apt-get install chromium` as root (make test does)"
ARTIFACTS = REPO_ROOT / ".cache" / "test-artifacts"
READY = re.compile(r"flux2-studio: serving on (http://\S+)")
GENERATE_TIMEOUT_MS = 120_000


def chromium_path() -> str:
    """The system's Chromium, or a test failure saying how to install it."""
    found = os.environ.get("FLUX2_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's `Browser`), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class StudioProcess:
    """A running `flux2-studio`; its stderr is collected on a thread."""

    process: subprocess.Popen[str]
    out_dir: Path
    log: list[str] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        threading.Thread(target=lambda: self.log.extend(stderr), daemon=True).start()

    def wait_ready(self, timeout_s: float = 180) -> str:
        deadline = time.monotonic() + timeout_s
        while not self.url:
            for line in list(self.log):
                if match := READY.search(line):
                    self.url = match.group(1)
            assert self.process.poll() is None, f"flux2-studio exited: {self.output()}"
            assert time.monotonic() < deadline, f"flux2-studio not ready: {self.output()}"
            time.sleep(0.05)
        return self.url

    def output(self) -> str:
        return "".join(self.log)

    def lines(self, text: str) -> list[str]:
        return [line for line in list(self.log) if text in line]

    def wait_for_log(self, text: str, timeout_s: float = 60) -> str:
        wait_until(lambda: bool(self.lines(text)), timeout_s)
        return self.lines(text)[-1]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def studio(
    encoder: str,
    snapshot: Path,
    out_dir: Path,
    *flags: str,
    limits: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[StudioProcess]:
    """`flux2-studio` on a free loopback port, ready when this yields; `limits` as `tests.support.rlimits` takes them,
    `env` (default: this process's) as its environment."""
    command = [sys.executable, "-m", "diffusion_client.studio.cli", "--encoder", encoder, "--model", str(snapshot)]
    command = limited([*command, "--port", "0", "--out-dir", str(out_dir), *flags], **(limits or {}))
    environment = {
        **(env or os.environ),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(out_dir.parent / "gradio-uploads"),
    }
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment)
    running = StudioProcess(process, out_dir)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def fill_form(page: Any, prompt: str, *, seed: int, steps: int = 2, width: int = 256, height: int = 256) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#seed input").fill(str(seed))
    page.locator("#steps input[type=number]").fill(str(steps))
    page.locator("#width input").fill(str(width))
    page.locator("#height input").fill(str(height))


def status_text(page: Any) -> str:
    """The status box's text: a read-only textbox, so nothing in it is ever rendered as HTML."""
    return str(page.locator("#status textarea").input_value()).strip()


def upload(page: Any, *paths: Path) -> None:
    """Put files into the reference images box and wait until it lists them."""
    page.locator("#references input[type=file]").set_input_files([str(path) for path in paths])
    for path in paths:
        page.locator(f"#references td.filename[aria-label='{path.name}']").wait_for()


def click_and_wait(page: Any, button: str = "#generate", expect: str = "wrote|Error|Cancelled") -> str:
    """Click `button`, then wait until the status box says something new that matches `expect`; return it."""
    before = status_text(page)
    page.locator(button).click()
    pattern = re.compile(expect)
    deadline = time.monotonic() + GENERATE_TIMEOUT_MS / 1000
    while True:
        now = status_text(page)
        if now != before and pattern.search(now):
            return now
        assert time.monotonic() < deadline, f"status stayed {now!r}"
        page.wait_for_timeout(100)


def download(page: Any, to: Path) -> Path:
    """Save the file the Download box offers to `to`."""
    with page.expect_download() as started:
        page.locator("#download a").first.click()
    started.value.save_as(to)
    return to


def screenshot(page: Any, name: str) -> Path:
    """Keep a screenshot of the page among the test artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
