"""`flux2-studio` in a real headless Chromium: a real page process, a real encoder server on loopback.

Images from the page are compared with `flux2-generate`'s for the same settings; both carry the same marks, so
their pixels match exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_client.provenance.verify import check_file
from tests.generation.test_generate_errors import hand_made_png
from tests.support.browser import (
    StudioProcess,
    chromium,
    click_and_wait,
    download,
    fill_form,
    screenshot,
    status_text,
    studio,
    upload,
)
from tests.support.cli_runs import run_cli, wait_until
from tests.support.helpers import RunningServer, start_server
from tests.support.lora_files import load_tiny_transformer, random_lora

UPSAMPLE_TOKENS = 12


@pytest.fixture(scope="module")
def upsampling_server(tiny_snapshot: Path) -> Iterator[RunningServer]:
    with start_server(
        tiny_snapshot, max_layer=34, enable_upsampling=True, upsample_max_new_tokens=UPSAMPLE_TOKENS
    ) as s:
        yield s


@pytest.fixture(scope="module")
def lora_dir(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    random_lora(load_tiny_transformer(tiny_snapshot), folder / "style", seed=3)
    return folder


@pytest.fixture(scope="module")
def page_process(
    upsampling_server: RunningServer, tiny_snapshot: Path, lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StudioProcess]:
    out_dir = tmp_path_factory.mktemp("studio") / "images"
    with studio(upsampling_server.target, tiny_snapshot, out_dir, "--lora-dir", str(lora_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser, page_process):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    opened = context.new_page()
    opened.goto(page_process.url)
    opened.locator("#prompt textarea").wait_for()
    yield opened
    context.close()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def cli_image(server: RunningServer, snapshot: Path, out: Path, *args: str) -> Path:
    finished = run_cli("--encoder", server.target, "--model", str(snapshot), "--quiet", "--out", str(out), *args)
    assert finished.returncode == 0, finished.stderr
    return out


def details(page) -> dict:  # type: ignore[no-untyped-def]
    """The settings the page shows for the selected image (Gradio's JSON view holds the text)."""
    text = page.locator("#details").inner_text()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def test_page_image_is_pixel_identical_to_flux2_generate_and_carries_the_marks(
    page, page_process, upsampling_server, tiny_snapshot, tmp_path
):
    fill_form(page, "a lighthouse at dusk", seed=7)
    said = click_and_wait(page)
    assert said.startswith("Seed 7: wrote"), said
    screenshot(page, "studio-page.png")
    from_page = download(page, tmp_path / "page.png")
    from_cli = cli_image(
        upsampling_server, tiny_snapshot, tmp_path / "cli.png", "a lighthouse at dusk", "--seed", "7", "--steps", "2",
        "--width", "256", "--height", "256",
    )  # fmt: skip
    assert np.array_equal(pixels(from_page), pixels(from_cli))
    marks = check_file(from_page)
    assert marks.marked and marks.watermark is not None and marks.watermark.found
    assert marks.manifest.state == "valid", marks.describe()
    written = sorted(page_process.out_dir.glob("*.png"))
    assert from_page.read_bytes() in [path.read_bytes() for path in written]  # the download is the file written


def test_edit_with_two_uploaded_reference_images_matches_flux2_generate(
    page, upsampling_server, tiny_snapshot, tmp_path
):
    references = []
    for number, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        path = tmp_path / f"reference-{number}.png"
        Image.new("RGB", (96, 80), colour).save(path)
        references.append(path)
    fill_form(page, "put them together", seed=3)
    upload(page, *references)
    said = click_and_wait(page)
    assert said.startswith("Seed 3: wrote"), said
    assert details(page)["reference_images"] == 2
    from_page = download(page, tmp_path / "page.png")
    from_cli = cli_image(
        upsampling_server, tiny_snapshot, tmp_path / "cli.png", "put them together", "--seed", "3", "--steps", "2",
        "--width", "256", "--height", "256", "--image", str(references[0]), "--image", str(references[1]),
    )  # fmt: skip
    assert np.array_equal(pixels(from_page), pixels(from_cli))


def test_upsample_toggle_shows_the_servers_rewrite_and_generates_from_it(
    page, upsampling_server, tiny_snapshot, tmp_path
):
    fill_form(page, "a cat", seed=5)
    page.locator("#upsample input").check()
    said = click_and_wait(page, "#rewrite-button", "Rewritten|Error")
    assert said.startswith("Rewritten by the encoder server with seed 5"), said
    shown = page.locator("#rewrite textarea").input_value()
    cli = run_cli(
        "--encoder", upsampling_server.target, "--model", str(tiny_snapshot), "--quiet", "--out",
        str(tmp_path / "cli.png"), "a cat", "--seed", "5", "--steps", "2", "--width", "256", "--height", "256",
        "--upsample",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    printed = [line.removeprefix("upsampled: ") for line in cli.stdout.splitlines() if line.startswith("upsampled: ")]
    assert shown.strip() and " ".join(shown.split()) == printed[0]
    said = click_and_wait(page)
    assert said.startswith("Seed 5: wrote"), said
    assert details(page)["rewritten_prompt"] == shown
    assert np.array_equal(pixels(download(page, tmp_path / "page.png")), pixels(tmp_path / "cli.png"))


def test_an_edited_rewrite_is_what_the_image_is_generated_from(page):
    fill_form(page, "a cat", seed=5)
    page.locator("#upsample input").check()
    page.locator("#rewrite textarea").fill("a cat, edited by hand")
    said = click_and_wait(page)
    assert said.startswith("Seed 5: wrote"), said
    assert details(page)["rewritten_prompt"] == "a cat, edited by hand"


def assert_page_message(page, said: str, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert said.startswith("Error:"), said
    for fragment in fragments:
        assert fragment in said, said
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body


def test_size_17_shows_one_readable_message_and_a_later_generate_works(page):
    fill_form(page, "a boat", seed=1, width=17)
    assert_page_message(page, click_and_wait(page), "width 17 is not a multiple of 16; use 16 or 32")
    page.locator("#width input").fill("256")
    assert click_and_wait(page).startswith("Seed 1: wrote")


def test_reference_claiming_20000_squared_pixels_shows_the_limit_and_a_later_generate_works(page, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(hand_made_png(20000, 20000))
    fill_form(page, "edit it", seed=2)
    upload(page, bomb)
    said = click_and_wait(page)
    assert_page_message(page, said, "reference image bomb.png is 400,000,000 pixels", "8192x8192")
    assert "gradio-uploads" not in said  # the page names the file as uploaded, not where the server keeps it
    page.locator("#references button[aria-label='Clear']").first.click()
    assert click_and_wait(page).startswith("Seed 2: wrote")


def test_two_browser_contexts_at_once_each_get_their_own_image_one_after_the_other(browser, page_process):
    pages = []
    for seed, steps in ((11, 60), (12, 2)):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        opened = context.new_page()
        opened.goto(page_process.url)
        opened.locator("#prompt textarea").wait_for()
        fill_form(opened, f"a tree number {seed}", seed=seed, steps=steps)
        pages.append(opened)
    pages[0].locator("#generate").click()
    page_process.wait_for_log("(seed 11): started")
    pages[1].locator("#generate").click()
    # While the first image denoises, the second page shows its place in Gradio's queue.
    pages[1].locator("#status [data-testid='status-tracker']", has_text="queue").wait_for(timeout=30_000)
    shown = []
    for opened, seed in zip(pages, (11, 12), strict=True):
        wait_until(lambda opened=opened: "wrote" in status_text(opened), 120)
        assert status_text(opened).startswith(f"Seed {seed}: wrote")
        assert len(opened.locator("#gallery img").all()) >= 1
        shown.append(details(opened))
        opened.context.close()
    assert shown[0]["file"] != shown[1]["file"]
    first, second = sorted(shown, key=lambda item: item["started"])
    assert first["finished"] <= second["started"]  # the GPU ran one job at a time


def test_cancel_stops_the_job_between_steps_and_writes_nothing(page, page_process):
    before = set(page_process.out_dir.iterdir())
    fill_form(page, "a very long job", seed=21, steps=200)
    page.locator("#generate").click()
    page_process.wait_for_log("(seed 21): started")
    # The per-step progress bar: "denoising", then steps done of 200.
    page.locator("[data-testid='status-tracker']", has_text="denoising").first.wait_for(timeout=30_000)
    assert click_and_wait(page, "#cancel", "Cancelled") == "Cancelled."
    line = page_process.wait_for_log("(seed 21): cancelled after")
    done = int(line.split("cancelled after ")[1].split(" of ")[0])
    assert done < 200
    assert set(page_process.out_dir.iterdir()) == before


def test_closing_the_page_cancels_its_job(browser, page_process):
    context = browser.new_context()
    opened = context.new_page()
    opened.goto(page_process.url)
    opened.locator("#prompt textarea").wait_for()
    fill_form(opened, "a job nobody waits for", seed=31, steps=200)
    opened.locator("#generate").click()
    page_process.wait_for_log("(seed 31): started")
    closed_at = time.monotonic()
    context.close()
    line = page_process.wait_for_log("(seed 31): cancelled after", timeout_s=60)
    assert "of 200 steps" in line
    assert time.monotonic() - closed_at < 30


def call_api(url: str, endpoint: str, data: list) -> str:  # type: ignore[type-arg]
    """Post to the page's API as a script would, past every widget, and return the whole event stream."""
    import requests

    started = requests.post(f"{url}/gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
    event = started.json().get("event_id")
    if event is None:
        return started.text
    return requests.get(f"{url}/gradio_api/call/{endpoint}/{event}", timeout=120).text


def api_form(**changes) -> list:  # type: ignore[no-untyped-def,type-arg]
    fields = dict(prompt="a fox", seed=1, random=False, steps=2, guidance=4.0, width=64, height=64, references=None,
                  loras={"headers": ["LoRA", "scale"], "data": []}, upsample=False, rewrite="")  # fmt: skip
    fields.update(changes)
    return [*fields.values(), []]  # the last input is the session's gallery, which the server keeps


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (dict(prompt="x" * 1_000_000), "the prompt is 1,000,000 characters; the limit is 20,000"),
        (dict(width=1e308), "out of range"),
        (dict(loras={"headers": ["LoRA", "scale"], "data": [["../../etc/passwd", 1.0]]}), "is not in the LoRA folder"),
        (dict(references=[{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]), "not uploaded by its"),
        (dict(seed="abc"), None),
        (dict(upsample="yes please"), "upsample must be true or false"),
    ],
)
def test_calls_that_bypass_the_widgets_are_refused_and_the_page_keeps_serving(page_process, changes, expected):
    answer = call_api(page_process.url, "generate", api_form(**changes))
    assert "wrote" not in answer and "root:" not in answer and "Traceback" not in answer
    if expected is None:
        assert "event: error" in answer, answer[-500:]  # refused by Gradio's own checks, before our handler
    else:
        assert expected in answer, answer[-500:]
    assert "wrote" in call_api(page_process.url, "generate", api_form(seed=int(time.time()) % 1000))


def test_reuse_puts_an_images_settings_back_into_the_form(page):
    fill_form(page, "a red kite", seed=41, steps=3, width=64, height=64)
    assert click_and_wait(page).startswith("Seed 41: wrote")
    fill_form(page, "something else", seed=99, steps=5, width=128, height=128)
    said = click_and_wait(page, "#reuse", "back in the form")
    assert said.startswith("Settings of seed 41")
    assert page.locator("#prompt textarea").input_value() == "a red kite"
    assert page.locator("#seed input").input_value() == "41"
    assert page.locator("#steps input[type=number]").input_value() == "3"
    assert (page.locator("#width input").input_value(), page.locator("#height input").input_value()) == ("64", "64")


def test_an_upload_over_max_upload_mib_is_refused_and_not_kept(page_process):
    import requests

    uploads = page_process.out_dir.parent / "gradio-uploads"
    before = sum(path.stat().st_size for path in uploads.rglob("*") if path.is_file())
    files = {"files": ("big.png", b"\0" * (51 * 2**20), "image/png")}  # the default limit is 50 MiB
    answer = requests.post(f"{page_process.url}/gradio_api/upload", files=files, timeout=120)
    assert answer.status_code == 413, answer.text[:300]
    after = sum(path.stat().st_size for path in uploads.rglob("*") if path.is_file())
    assert after - before < 2**20
    assert requests.get(page_process.url, timeout=30).status_code == 200


def test_a_lora_given_a_scale_in_the_table_gives_flux2_generates_image(
    page, lora_dir, upsampling_server, tiny_snapshot, tmp_path
):
    lora = next(lora_dir.rglob("*.safetensors"))
    assert page.locator("#loras").inner_text().count(lora.relative_to(lora_dir).as_posix()) == 1
    page.locator("#loras [data-testid='cell-0-1']").dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type("0.8")
    page.keyboard.press("Enter")
    fill_form(page, "a fox", seed=10, width=64, height=64)
    assert click_and_wait(page).startswith("Seed 10: wrote")
    assert details(page)["loras"] == [{"name": lora.name, "scale": 0.8}]
    from_cli = cli_image(
        upsampling_server, tiny_snapshot, tmp_path / "cli.png", "a fox", "--seed", "10", "--steps", "2",
        "--width", "64", "--height", "64", "--lora", f"{lora}:0.8",
    )  # fmt: skip
    assert np.array_equal(pixels(download(page, tmp_path / "page.png")), pixels(from_cli))
