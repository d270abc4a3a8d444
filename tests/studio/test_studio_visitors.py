"""Visitors of one `flux2-studio` (a real process, no login) against each other: whose files, uploads and queue
places are whose. Scripts speak HTTP with `requests`; pages are Debian's Chromium.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.browser import StudioProcess, chromium, click_and_wait, fill_form, status_text, studio
from tests.support.cli_runs import wait_until

VISITOR_COOKIE = "flux2-studio-visitor"
MIB = 2**20
XSS_LORA = "<img src=studio-xss-probe.png>.safetensors"  # what a careless or hostile LoRA file could be called


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    (folder / XSS_LORA).write_bytes(b"not a LoRA")
    return folder


@pytest.fixture(scope="module")
def page_process(encoder_server, tiny_snapshot, lora_dir, tmp_path_factory) -> Iterator[StudioProcess]:  # type: ignore[no-untyped-def]
    out_dir = tmp_path_factory.mktemp("visitors") / "images"
    quotas = ["--max-upload-mib", "1", "--session-upload-mib", "2", "--total-upload-mib", "3"]
    with studio(encoder_server.target, tiny_snapshot, out_dir, "--lora-dir", str(lora_dir), *quotas) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def form(**changes: Any) -> list[Any]:
    fields = dict(prompt="a fox", seed=1, random=False, steps=2, guidance=4.0, width=64, height=64, references=None,
                  loras={"headers": ["LoRA", "scale"], "data": []}, upsample=False, rewrite="")  # fmt: skip
    fields.update(changes)
    return [*fields.values(), []]  # the last input is the session's gallery, which the server keeps


def generate(client: Any, url: str, session_hash: str | None = None, **changes: Any) -> list[Any]:
    """Generate through the page's API as a script would; the outputs (status line first), or a failed test."""
    body: dict[str, Any] = {"data": form(**changes)}
    if session_hash is not None:
        body["session_hash"] = session_hash
    started = client.post(f"{url}/gradio_api/call/generate", json=body, timeout=30)
    assert started.status_code == 200, started.text
    stream = client.get(f"{url}/gradio_api/call/generate/{started.json()['event_id']}", timeout=300).text
    assert "event: complete\ndata: " in stream, stream[:500]  # after any heartbeats while it waited
    return list(json.loads(stream.split("event: complete\ndata: ", 1)[1].split("\n", 1)[0]))


def visitor(url: str) -> requests.Session:
    """A script that loaded the page first, as a browser does: it carries the page's visitor cookie."""
    session = requests.Session()
    session.get(url, timeout=30).raise_for_status()
    assert VISITOR_COOKIE in session.cookies
    return session


@contextlib.contextmanager
def open_page(url: str, session: requests.Session) -> Iterator[None]:
    """The page's heartbeat stream, open while the block runs, as a browser tab holds it; closing it closes the page."""
    heartbeat = session.get(f"{url}/gradio_api/heartbeat/{secrets.token_hex(5)}", stream=True, timeout=30)
    try:
        yield
    finally:
        heartbeat.close()


def upload(client: Any, url: str, size: int) -> requests.Response:
    files = {"files": (f"{secrets.token_hex(4)}.png", secrets.token_bytes(size), "image/png")}
    return client.post(f"{url}/gradio_api/upload", files=files, timeout=60)


def stored_uploads(page_process: StudioProcess) -> set[Path]:
    uploads = page_process.out_dir.parent / "gradio-uploads"
    return {path for path in uploads.rglob("*") if path.is_file() and not path.parent.name.startswith("flux2-studio-")}


def test_another_visitor_cannot_fetch_an_image_even_knowing_its_url(page_process):
    url = page_process.url
    maker, other = visitor(url), visitor(url)
    outputs = generate(maker, url, seed=3)
    download = outputs[5]
    name = download["orig_name"]
    assert re.fullmatch(r"studio-\d{8}-\d{6}-[0-9a-f]{32}-seed3\.png", name)  # 128 random bits of its own
    assert maker.get(download["url"], timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"
    gallery_image = outputs[3]["value"][0]["image"]["url"]
    for url_known in (download["url"], gallery_image):
        assert other.get(url_known, timeout=30).status_code == 403
        assert requests.get(url_known, timeout=30).status_code == 403  # a script without the cookie
    in_out_dir = page_process.out_dir / name
    assert in_out_dir.is_file()
    assert maker.get(f"{url}/gradio_api/file={in_out_dir}", timeout=30).status_code == 403  # --out-dir is not served


def test_a_script_without_cookies_fetches_its_own_images_by_its_address(page_process):
    download = generate(requests, page_process.url, seed=4)[5]
    assert requests.get(download["url"], timeout=30).status_code == 200
    assert visitor(page_process.url).get(download["url"], timeout=30).status_code == 403


def test_uploads_past_a_browsers_quota_are_refused_unstored_while_another_browser_still_uploads(page_process):
    url = page_process.url
    greedy, modest = visitor(url), visitor(url)
    with open_page(url, greedy), open_page(url, modest):
        assert upload(greedy, url, 900_000).status_code == 200
        assert upload(greedy, url, 900_000).status_code == 200
        before = stored_uploads(page_process)
        refused = upload(greedy, url, 900_000)
        assert refused.status_code == 413
        assert refused.text == (
            "this upload (1 MiB) would take this page's uploads past 2 MiB; remove some reference images, "
            "or close other pages of this browser"
        )
        assert stored_uploads(page_process) == before
        assert upload(modest, url, 900_000).status_code == 200
    wait_until(lambda: not stored_uploads(page_process), 30)  # both pages closed: their browsers' uploads went


def test_uploads_past_the_pages_total_are_refused_for_everyone(page_process):
    url = page_process.url
    visitors = [visitor(url) for _ in range(4)]
    with contextlib.ExitStack() as pages:
        for each in visitors:
            pages.enter_context(open_page(url, each))
        for each in visitors[:3]:
            assert upload(each, url, 900_000).status_code == 200  # 2.6 MiB of the 3 kept
        refused = upload(visitors[3], url, 900_000)
        assert refused.status_code == 413
        assert refused.text == "the page holds 3 MiB of uploads from everyone already; try again later"
    wait_until(lambda: not stored_uploads(page_process), 30)  # each page closed: its browser's uploads went


def test_a_browsers_uploads_are_deleted_when_its_page_closes(browser, page_process, tmp_path):
    reference = tmp_path / "reference.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 120, 200)).save(reference)
    before = stored_uploads(page_process)
    context = browser.new_context()
    page = context.new_page()
    page.goto(page_process.url)
    page.locator("#references input[type=file]").set_input_files([str(reference)])
    page.locator("#references td.filename[aria-label='reference.png']").wait_for()
    added = stored_uploads(page_process) - before
    assert [path.name for path in added] == ["reference.png"]
    context.close()
    wait_until(lambda: not any(path.exists() for path in added), 30)
    assert page_process.wait_for_log("deleted 1 upload(s) of a browser whose last page closed")


def test_a_call_naming_a_server_file_is_refused_in_one_line_and_logged_in_one_line(page_process):
    url = page_process.url
    passwd = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    answer = requests.post(f"{url}/gradio_api/call/generate", json={"data": form(references=[passwd])}, timeout=30)
    assert answer.status_code == 400
    message = "the call names a file (passwd) that was not uploaded by its caller; upload it first"
    assert answer.json() == {"detail": message}
    line = page_process.wait_for_log("refused a call from 127.0.0.1")
    assert line.strip() == f"flux2-studio: refused a call from 127.0.0.1: {message}"
    assert "Traceback" not in page_process.output()


def test_a_call_naming_another_visitors_upload_is_refused(page_process):
    url = page_process.url
    owner, thief = visitor(url), visitor(url)
    with open_page(url, owner):
        stored = upload(owner, url, 1000).json()[0]
        theirs = {"path": stored, "meta": {"_type": "gradio.FileData"}}
        answer = thief.post(f"{url}/gradio_api/call/generate", json={"data": form(references=[theirs])}, timeout=30)
        assert answer.status_code == 400 and "not uploaded by its caller" in answer.text
        assert thief.get(f"{url}/gradio_api/file={stored}", timeout=30).status_code == 403
        assert owner.get(f"{url}/gradio_api/file={stored}", timeout=30).status_code == 200
    wait_until(lambda: not stored_uploads(page_process), 30)


def test_a_session_over_its_queue_share_gets_one_line_while_another_session_gets_its_image(browser, page_process):
    url = page_process.url
    greedy = secrets.token_hex(5)  # one session, as a script keeping its session hash would be
    events = [
        requests.post(
            f"{url}/gradio_api/call/generate",
            json={"data": form(seed=seed, steps=steps, width=256, height=256), "session_hash": greedy},
            timeout=30,
        ).json()["event_id"]
        for seed, steps in ((61, 100), (62, 2), (63, 2))
    ]
    # Gradio streams every event of a session to whichever of its streams is read first.
    statuses = []
    with requests.get(f"{url}/gradio_api/call/generate/{events[0]}", stream=True, timeout=300) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: [") and len(statuses) < 3:
                statuses.append(json.loads(line.removeprefix("data: "))[0])
            if len(statuses) == 3:
                break
    refused = [text for text in statuses if "wrote" not in text]
    assert refused == [
        "Error: this page has 2 images queued already, the most a page may have; wait for one to finish, or Cancel"
    ]
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    page.locator("#prompt textarea").wait_for()
    fill_form(page, "another page's fox", seed=64, width=64, height=64)
    assert click_and_wait(page).startswith("Seed 64: wrote")
    page.context.close()


def test_a_job_whose_page_closed_before_it_started_never_runs(browser, page_process):
    pages = []
    for _ in range(2):
        opened = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        opened.goto(page_process.url)
        opened.locator("#prompt textarea").wait_for()
        pages.append(opened)
    busy, leaving = pages
    fill_form(busy, "a long job", seed=71, steps=200, width=512, height=512)
    busy.locator("#generate").click()
    page_process.wait_for_log("(seed 71): started")
    fill_form(leaving, "a job nobody will wait for", seed=72, width=64, height=64)
    leaving.locator("#generate").click()
    leaving.locator("#status [data-testid='status-tracker']", has_text="in the queue: 1 ahead").wait_for(timeout=30_000)
    leaving.context.close()
    page_process.wait_for_log("a page closed: its 1 job(s) cancelled")
    assert click_and_wait(busy, "#cancel", "Cancelled") == "Cancelled."
    line = page_process.wait_for_log("(seed 72): dropped")
    assert line.strip().endswith("dropped before it started: its page closed")
    assert not page_process.lines("(seed 72): started")
    assert not list(page_process.out_dir.glob("*seed72*"))
    busy.context.close()


def test_a_lora_named_like_html_shows_as_text_and_loads_nothing(browser, page_process, lora_dir):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(page_process.url)
    page.locator("#prompt textarea").wait_for()
    page.locator("#loras [data-testid='cell-0-1']").dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type("0.8")
    page.keyboard.press("Enter")
    fill_form(page, "a fox", seed=81, width=64, height=64)
    said = click_and_wait(page)
    assert said.startswith(f"Error: LoRA {XSS_LORA}: "), said
    assert str(lora_dir) not in said
    time.sleep(1)  # what the page would fetch for an <img>, it would have asked for by now
    assert not [url for url in requested if "studio-xss-probe" in url]
    assert status_text(page) == said
    page.context.close()
