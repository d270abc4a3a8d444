"""The page under trouble: an encoder that stops and comes back, a login, calls that bypass the page's widgets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.generation.test_demo import AVX512_BF16_SITECUSTOMIZE
from tests.support.browser import StudioProcess, chromium, click_and_wait, fill_form, status_text, studio
from tests.support.cli_runs import REPO_ROOT, free_port
from tests.support.helpers import start_server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def open_page(browser, url: str):  # type: ignore[no-untyped-def]
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    return page


def test_an_encoder_that_stops_is_one_message_and_the_page_works_once_it_is_back(browser, tiny_snapshot, tmp_path):
    port = free_port()
    server = start_server(tiny_snapshot, max_layer=34, port=port)
    server.__enter__()
    target = f"127.0.0.1:{port}"
    stack = contextlib.ExitStack()
    stack.callback(server.__exit__, None, None, None)  # stopped by the test, or here if it fails first
    with stack, studio(target, tiny_snapshot, tmp_path / "images", "--timeout", "4") as running:
        page = open_page(browser, running.url)
        page.locator("#prompt textarea").wait_for()
        fill_form(page, "a harbour", seed=1, width=64, height=64)
        assert click_and_wait(page).startswith("Seed 1: wrote")
        stack.close()
        page.locator("#prompt textarea").fill("a harbour at night")  # not in the client's embedding cache
        said = click_and_wait(page)
        assert said.startswith("Error:") and target in said, said
        assert "Traceback" not in page.locator("body").inner_text()
        with start_server(tiny_snapshot, max_layer=34, port=port):
            said = click_and_wait(page)
            assert said.startswith("Seed 1: wrote"), said
        assert running.process.poll() is None


def test_with_an_auth_file_the_page_asks_to_log_in_and_refuses_a_wrong_password(
    browser, encoder_server, tiny_snapshot, tmp_path: Path
):
    credentials = tmp_path / "auth"
    credentials.write_text("ana:correct horse\n")
    credentials.chmod(0o600)
    with studio(encoder_server.target, tiny_snapshot, tmp_path / "images", "--auth-file", str(credentials)) as running:
        assert running.url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        page = open_page(browser, running.url)
        page.get_by_label("username").first.wait_for()
        assert page.locator("#prompt textarea").count() == 0
        page.get_by_label("username").first.fill("ana")
        page.get_by_label("password").first.fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect").first.wait_for()
        page.get_by_label("username").first.fill("ana")
        page.get_by_label("password").first.fill("correct horse")
        page.get_by_role("button", name="Login").click()
        page.locator("#prompt textarea").wait_for()
        fill_form(page, "a lock", seed=2, width=64, height=64)
        assert click_and_wait(page).startswith("Seed 2: wrote")
        assert "can be read by other users" not in running.output()  # it is 0600
        assert status_text(page)


@pytest.fixture(scope="module")
def cramped_studio(encoder_server, tiny_snapshot, tmp_path_factory) -> Iterator[StudioProcess]:  # type: ignore[no-untyped-def]
    """A page whose disk takes no file past 64 KiB (a 256x256 image of noise is over it, a 64x64 one under)."""
    out_dir = tmp_path_factory.mktemp("cramped") / "images"
    with studio(encoder_server.target, tiny_snapshot, out_dir, limits={"FSIZE": 65536}) as running:
        yield running


def test_a_full_disk_is_one_message_leaves_no_partial_file_and_smaller_images_still_write(browser, cramped_studio):
    out_dir = cramped_studio.out_dir
    page = open_page(browser, cramped_studio.url)
    page.locator("#prompt textarea").wait_for()
    fill_form(page, "a big picture", seed=3)
    said = click_and_wait(page)
    assert said.startswith("Error: cannot write") and "File too large" in said, said
    assert list(out_dir.iterdir()) == []
    fill_form(page, "a small picture", seed=3, width=64, height=64)
    assert click_and_wait(page).startswith("Seed 3: wrote")
    assert len(list(out_dir.iterdir())) == 1


def test_the_page_prints_only_its_own_lines_even_where_bitsandbytes_sees_avx512_bf16(
    browser, encoder_server, tiny_snapshot, tmp_path
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AVX512_BF16_SITECUSTOMIZE)  # bitsandbytes' other CPU path, and its warning
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}
    with studio(encoder_server.target, tiny_snapshot, tmp_path / "images", env=env) as running:
        page = open_page(browser, running.url)
        page.locator("#prompt textarea").wait_for()
        fill_form(page, "a quiet page", seed=4, width=64, height=64)
        assert click_and_wait(page).startswith("Seed 4: wrote")
        running.wait_for_log("(seed 4): wrote")
    lines = running.output().splitlines()
    assert lines and all(line.startswith("flux2-studio: ") for line in lines), running.output()
