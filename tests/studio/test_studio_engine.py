"""`Studio`, the plain object behind the page: page requests become the CLI's jobs, run one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_client.errors import InputError
from diffusion_client.studio.engine import Cancelled, QueueFull, QueueLimits, Studio
from diffusion_client.studio.form import PageRequest
from diffusion_client.studio.loras import chosen_loras, lora_rows
from tests.support.cli_runs import run_cli
from tests.support.lora_files import load_tiny_transformer, random_lora

WAIT_S = 120


@pytest.fixture(scope="module")
def studio(encoder_server, tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:  # type: ignore[no-untyped-def]
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import ImageGenerator
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline

    pipeline = load_pipeline(PipelineConfig(model_path=tiny_snapshot, device="cpu", quantize="none"))
    with RemoteTextEncoder(encoder_server.target) as encoder:
        made = Studio(
            ImageGenerator(pipeline, encoder, model_name="tiny", progress=False), tmp_path_factory.mktemp("out")
        )
        yield made
        made.close()


def request(seed: int, steps: int = 2, **changes) -> PageRequest:  # type: ignore[no-untyped-def]
    return PageRequest(**{"prompt": "a fox", "seed": seed, "steps": steps, "guidance": 4.0, "width": 64,
                          "height": 64, **changes})  # fmt: skip


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_jobs_from_several_pages_run_one_at_a_time_in_the_order_submitted(studio):
    jobs = [studio.submit(request(seed, steps=6), owner=f"page-{seed}") for seed in (1, 2, 3)]
    images = [job.future.result(WAIT_S) for job in jobs]
    for earlier, later in zip(images, images[1:], strict=False):
        assert earlier.finished <= later.started
    assert len({image.path for image in images}) == 3


def test_the_generator_reports_each_step_as_it_finishes(studio, tmp_path):
    from diffusion_client.generation.jobs import GenerationJob

    generator = studio.generator
    prepared = generator.prepare([GenerationJob("a fox", tmp_path / "fox.png", steps=5, height=64, width=64)])[0]
    reported: list[tuple[int, int]] = []
    generator.generate(prepared, generator.fetch_embeds(prepared.job), on_step=lambda *step: reported.append(step))
    assert reported == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_a_job_shows_the_steps_done(studio):
    job = studio.submit(request(4, steps=5), owner="page")
    job.future.result(WAIT_S)
    assert job.steps_done == 5


def test_cancelling_a_page_cancels_its_waiting_job_and_spares_the_others(studio):
    blocker = studio.submit(request(5, steps=200), owner="busy")
    waiting = studio.submit(request(6), owner="closed-page")
    other = studio.submit(request(7), owner="open-page")
    assert studio.cancel_owner("closed-page") == 1
    assert studio.cancel_owner("busy") == 1
    with pytest.raises(Cancelled):
        waiting.future.result(WAIT_S)
    with pytest.raises(Cancelled):
        blocker.future.result(WAIT_S)
    assert waiting.steps_done == 0 and blocker.steps_done < 200
    assert other.future.result(WAIT_S).request.seed == 7


def test_a_failed_job_is_its_own_error_and_the_next_job_runs(studio):
    with pytest.raises(InputError, match="width 17 is not a multiple of 16"):
        studio.submit(request(8, width=17), owner="page").future.result(WAIT_S)
    assert studio.submit(request(9), owner="page").future.result(WAIT_S).path.exists()


def test_a_lora_picked_from_the_folder_gives_flux2_generates_image(
    studio, encoder_server, tiny_snapshot, tmp_path_factory
):
    folder = tmp_path_factory.mktemp("loras")
    lora = random_lora(load_tiny_transformer(tiny_snapshot), folder / "style", seed=3)
    name = lora.relative_to(folder).as_posix()
    assert [name, 0.0] in lora_rows(folder)
    picked = chosen_loras([[name, 0.8]], folder)
    image = studio.submit(request(10, loras=picked), owner="page").future.result(WAIT_S)
    out = tmp_path_factory.mktemp("cli") / "cli.png"
    cli = run_cli(
        "--encoder", encoder_server.target, "--model", str(tiny_snapshot), "--quiet", "--out", str(out), "a fox",
        "--seed", "10", "--steps", "2", "--width", "64", "--height", "64", "--lora", f"{lora}:0.8",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert np.array_equal(pixels(image.path), pixels(out))
    assert image.settings()["loras"] == [{"name": lora.name, "scale": 0.8}]


@pytest.fixture
def capped(studio, tmp_path):  # type: ignore[no-untyped-def]
    """A second studio on the same pipeline with small queue limits and a log kept (the first one stays idle)."""
    lines: list[str] = []
    limits = QueueLimits(per_session=2, per_account=3, total=4)
    made = Studio(studio.generator, tmp_path, log=lines.append, limits=limits)
    made.lines = lines  # type: ignore[attr-defined]
    yield made
    made.close()  # cancels what is left


def test_a_page_with_its_share_queued_is_refused_with_one_line_while_other_pages_still_queue(capped):
    blocker = capped.submit(request(11, steps=200), owner="greedy", account="address 10.0.0.1")
    capped.submit(request(12), owner="greedy", account="address 10.0.0.1")
    with pytest.raises(QueueFull) as raised:
        capped.submit(request(13), owner="greedy", account="address 10.0.0.1")
    assert str(raised.value) == (
        "this page has 2 images queued already, the most a page may have; wait for one to finish, or Cancel"
    )
    other = capped.submit(request(14), owner="another page", account="address 10.0.0.2")
    capped.cancel_owner("greedy")
    assert other.future.result(WAIT_S).request.seed == 14
    assert blocker.steps_done < 200


def test_an_address_with_its_share_queued_is_refused_on_any_of_its_pages_and_a_full_queue_refuses_all(capped):
    capped.submit(request(21, steps=200), owner="page 1", account="address 10.0.0.1")
    capped.submit(request(22), owner="page 2", account="address 10.0.0.1")
    capped.submit(request(23), owner="page 3", account="address 10.0.0.1")
    with pytest.raises(QueueFull, match="^this address has 3 images queued already on all your pages"):
        capped.submit(request(24), owner="page 4", account="address 10.0.0.1")
    capped.submit(request(25), owner="page 5", account="user ana")
    with pytest.raises(QueueFull, match="the queue is full \\(4 images waiting\\)"):
        capped.submit(request(26), owner="page 6", account="user bo")


def test_a_job_whose_page_closed_before_it_started_is_dropped_unrun(capped):
    blocker = capped.submit(request(31, steps=200), owner="busy page")
    waiting = capped.submit(request(32), owner="closed page")
    assert capped.ahead_of(waiting) == 1
    assert capped.cancel_owner("closed page", why="its page closed") == 1
    capped.cancel_owner("busy page")
    with pytest.raises(Cancelled):
        waiting.future.result(WAIT_S)
    with pytest.raises(Cancelled):
        blocker.future.result(WAIT_S)
    assert "job 2 (seed 32): dropped before it started: its page closed" in capped.lines
    assert not any("(seed 32): started" in line for line in capped.lines)
    assert not waiting.started and waiting.steps_done == 0
    assert not list(capped.out_dir.glob("*seed32*"))


def test_a_failing_lora_is_named_as_listed_never_by_the_servers_folder(studio, tmp_path):
    folder = tmp_path / "server-only-loras"
    (folder / "styles").mkdir(parents=True)
    (folder / "styles" / "broken.safetensors").write_bytes(b"not a LoRA at all")
    picked = request(41, loras=chosen_loras([["styles/broken.safetensors", 1.0]], folder))
    listed = Studio(studio.generator, tmp_path / "out", lora_dir=folder)
    try:
        with pytest.raises(InputError) as raised:
            listed.submit(picked, owner="page").future.result(WAIT_S)
    finally:
        listed.close()
    message = listed.message(raised.value, picked)
    assert message.startswith("LoRA styles/broken.safetensors: ")
    assert str(folder) not in message and "server-only-loras" not in message


def test_image_names_carry_128_random_bits_each(studio):
    names = [studio.submit(request(seed), owner="page").future.result(WAIT_S).path.name for seed in (51, 51)]
    randoms = [name.split("-")[3] for name in names]
    assert all(len(part) == 32 and int(part, 16) >= 0 for part in randoms)  # 32 hex digits: 128 bits
    assert randoms[0] != randoms[1]
