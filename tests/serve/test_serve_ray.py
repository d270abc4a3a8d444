"""`flux2-serve --ray local --replicas 2`: the same API through Ray Serve, two CPU replicas each with its own
pipeline; concurrent callers each get their own image, and a replica killed mid-run is replaced while every
request still gets its image."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.support.cli_runs import free_port
from tests.support.serve_runs import ServeProcess, pixels, start_serve

REPLICA = "ServeReplica:flux2-serve:ImageReplica"


def replica_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", REPLICA], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.fixture(scope="module")
def ray_serve(tiny_snapshot: Path, encoder_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("serve-ray")
    port = free_port()
    # Ray's proxy listens on the port given (it takes no port 0), so the test picks a free one.
    process = start_serve(
        tiny_snapshot,
        encoder_server.target,
        "--ray",
        "local",
        "--replicas",
        "2",
        "--port",
        str(port),
        "--out-dir",
        str(folder / "images"),
    )
    try:
        yield process.wait_serving(timeout_s=240)
    finally:
        process.process.send_signal(signal.SIGTERM)
        try:
            process.process.wait(60)
        except subprocess.TimeoutExpired:
            process.stop()


def sdk(serve: ServeProcess, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=serve.base_url, api_key="none", max_retries=retries, timeout=120)


def generate(client: openai.OpenAI, seed: int, steps: int = 2) -> np.ndarray:
    reply = client.images.generate(
        prompt="a red fox", size="256x256", extra_body={"seed": seed, "num_inference_steps": steps}
    )
    return pixels(reply.data[0].b64_json or "")


def concurrently(client: openai.OpenAI, seeds: range, steps: int = 2) -> dict[int, np.ndarray]:
    images: dict[int, np.ndarray] = {}
    failures: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            images[seed] = generate(client, seed, steps)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert not failures, failures
    return images


def test_eight_concurrent_callers_each_get_their_own_image(ray_serve):
    assert len(replica_pids()) == 2
    client = sdk(ray_serve)
    images = concurrently(client, range(8))
    assert len(images) == 8
    for seed in (0, 5):
        assert np.array_equal(images[seed], generate(client, seed))
    assert not np.array_equal(images[0], images[1])


def test_a_replica_killed_mid_run_is_replaced_and_every_request_gets_its_image(ray_serve):
    client = sdk(ray_serve, retries=4)  # the SDK retries a 5xx, as every OpenAI client does
    victim = replica_pids()[0]
    results: dict[int, np.ndarray] = {}
    runner = threading.Thread(target=lambda: results.update(concurrently(client, range(10, 18), steps=50)))
    runner.start()
    time.sleep(1.0)
    assert runner.is_alive()  # the victim dies with requests in flight
    os.kill(victim, signal.SIGKILL)
    runner.join(300)
    assert len(results) == 8
    deadline = time.monotonic() + 120
    while not (len(replica_pids()) == 2 and victim not in replica_pids()):
        assert time.monotonic() < deadline, "the deployment did not get back to 2 replicas"
        time.sleep(0.5)
    assert np.array_equal(results[12], generate(client, 12, steps=50))
