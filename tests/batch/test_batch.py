"""`flux2-batch` end to end: a local Ray with two CPU workers, one encoder server on loopback, the tiny snapshot.

Each run is a real `flux2-batch` process that starts its own local Ray (`--ray local`), so nothing here can join
another test's cluster. The reference is `flux2-generate --prompts` on the same lines, in one process with one
torch thread, as each worker has (`--cpus-per-worker 1`): CPU float sums depend on how work is split over threads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.batch_runs import (
    batch_command,
    batch_env,
    error_lines,
    images,
    pixels,
    ray_workers,
    read_manifest,
    run_batch,
    with_ctrl_c,
    workers_temp_folder,
    write_jobs,
)
from tests.support.cli_runs import wait_until
from tests.support.helpers import RunningServer, start_server

pytestmark = pytest.mark.timeout(400)

# Twelve jobs, one with a reference image given relative to the prompts file's folder (the command's cwd).
JOBS: list[dict[str, Any]] = [
    {"prompt": f"a paper lantern number {index}", "seed": 100 + index, "height": 64, "width": 64, "steps": 2}
    for index in range(12)
]
JOBS[5]["guidance"] = 2.5
JOBS[7]["images"] = ["reference.png"]
NAMES = [f"image-{index:06d}.png" for index in range(12)]


class Gate:
    """Wraps the server's encoder: forward passes go through while passes are allowed, and wait at the gate after,
    so a test holds workers mid-job (waiting for an embedding) for as long as it needs."""

    def __init__(self, encoder: object) -> None:
        self._encoder = encoder
        self._condition = threading.Condition()
        self._allowed = math.inf
        self.waiting = 0  # passes held at the gate now

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)

    def allow(self, passes: float) -> None:
        """Let `passes` more forward passes through (math.inf: all), then hold the rest."""
        with self._condition:
            self._allowed = passes
            self._condition.notify_all()

    def encode_many(self, requests: object) -> object:
        with self._condition:
            self.waiting += 1
            self._condition.notify_all()
            assert self._condition.wait_for(lambda: self._allowed > 0, timeout=120)
            self.waiting -= 1
            self._allowed -= 1
        return self._encoder.encode_many(requests)  # type: ignore[attr-defined]

    def wait_until_held(self, timeout_s: float = 240) -> None:
        with self._condition:
            assert self._condition.wait_for(lambda: self.waiting > 0, timeout=timeout_s), "no pass reached the gate"


@dataclass
class GatedServer:
    server: RunningServer
    gate: Gate

    @property
    def target(self) -> str:
        return self.server.target


@pytest.fixture(scope="module")
def batch_encoder(tiny_snapshot: Path) -> Iterator[GatedServer]:
    """The encoder server of these tests, behind a `Gate`. One prompt per forward pass: a prompt's embedding never
    depends on whose prompt shared its pass (batched rows agree to 1e-5, not bit for bit), so two workers asking at
    once get what one process asking alone gets. No cache, so every job's prompt reaches the gate."""
    with start_server(tiny_snapshot) as plain:
        gate = Gate(plain.wait_ready())
        with start_server(tiny_snapshot, load_encoder=lambda: gate, max_batch_size=1, cache_bytes=0) as server:  # type: ignore[arg-type, return-value]
            yield GatedServer(server, gate)


@pytest.fixture
def gate(batch_encoder: GatedServer) -> Iterator[Gate]:
    """The gate, opened again after the test whatever happened."""
    yield batch_encoder.gate
    batch_encoder.gate.allow(math.inf)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prompts file and its reference image; commands run here, as a user would."""
    folder = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "reference.png")
    write_jobs(folder / "prompts.jsonl", JOBS)
    return folder


@pytest.fixture(scope="module")
def reference(workspace: Path, tiny_snapshot: Path, batch_encoder: GatedServer) -> list[np.ndarray]:
    """What `flux2-generate --prompts` makes of the twelve lines, in one process with one torch thread."""
    out = workspace / "reference" / "image.png"
    command = [sys.executable, "-m", "diffusion_client.generation.cli", "--prompts", "prompts.jsonl", "--out", str(out)]
    command += ["--encoder", batch_encoder.target, "--model", str(tiny_snapshot), "--quiet"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=workspace, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return [pixels(out.with_name(f"image-{index:03d}.png")) for index in range(len(JOBS))]


def batch_flags(encoder: GatedServer, snapshot: Path, out_dir: Path | str, workers: int = 2) -> list[str]:
    return [
        "--prompts",
        "prompts.jsonl",
        "--encoder",
        encoder.target,
        "--model",
        str(snapshot),
        "--out-dir",
        str(out_dir),
        "--ray",
        "local",
        "--workers",
        str(workers),
        "--quiet",
    ]


@pytest.fixture(scope="module")
def twelve_jobs(workspace: Path, tiny_snapshot: Path, batch_encoder: GatedServer) -> Path:
    """One run of the twelve jobs over two workers; its output folder."""
    out_dir = workspace / "two-workers"
    folders = workers_temp_folder(workspace / "two-workers-tmp")
    finished = run_batch(*batch_flags(batch_encoder, tiny_snapshot, out_dir), cwd=workspace, env=folders)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert error_lines(finished.stderr) == []
    (workspace / "two-workers.stderr").write_text(finished.stderr)
    assert "12 image(s) written, 0 failed, 0 skipped" in finished.stdout
    return out_dir


def test_twelve_jobs_over_two_workers_are_pixel_identical_to_flux2_generate(twelve_jobs, reference):
    assert images(twelve_jobs) == NAMES
    for index, name in enumerate(NAMES):
        assert pixels(twelve_jobs / name).std() > 0
        np.testing.assert_array_equal(pixels(twelve_jobs / name), reference[index], err_msg=name)


def test_a_quiet_run_prints_only_its_own_lines_none_of_rays(twelve_jobs, workspace):
    """Ray's workers, raylet and Ray Data would print dozens of lines here without the command keeping them off."""
    lines = [line for line in (workspace / "two-workers.stderr").read_text().splitlines() if line.strip()]
    assert all(line.startswith("flux2-batch:") for line in lines), lines


def test_metadata_names_a_reference_image_by_its_file_name_never_its_path(twelve_jobs, workspace):
    with Image.open(twelve_jobs / NAMES[7]) as image:
        parameters = json.loads(image.text["flux2-split"])
    assert parameters["reference_images"] == ["reference.png"]
    assert str(workspace) not in json.dumps(parameters)


def test_a_run_leaves_no_scratch_folder_behind_in_its_workers_temporary_folder(twelve_jobs, workspace):
    assert list((workspace / "two-workers-tmp").glob("flux2-batch-*")) == []


def test_manifest_lists_every_job_once_as_ok_with_where_it_came_from(twelve_jobs):
    manifest = read_manifest(twelve_jobs)
    assert [row["index"] for row in manifest] == list(range(12))
    for index, row in enumerate(manifest):
        assert row["status"] == "ok" and row["error"] is None
        assert row["origin"] == f"prompts.jsonl:{index + 1}"
        assert row["output"] == str(twelve_jobs / NAMES[index])
        assert row["seed"] == 100 + index
        assert row["seconds"] > 0


def test_a_worker_killed_mid_run_has_its_jobs_retried_and_every_image_written_once(
    workspace, tiny_snapshot, batch_encoder, gate, reference
):
    out_dir = workspace / "killed"
    gate.allow(0)  # every worker stops at its first prompt's embedding, mid-job
    log = (workspace / "killed.log").open("w")
    command = batch_command(*batch_flags(batch_encoder, tiny_snapshot, out_dir))
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=batch_env(), cwd=workspace)
    try:
        gate.wait_until_held()
        # Both workers started, and each holds a job: one waits at the gate, the other in the server's queue.
        wait_until(lambda: len(ray_workers(driver.pid)) == 2, timeout_s=120)
        victim = ray_workers(driver.pid)[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert images(out_dir) == []
        gate.allow(math.inf)
        assert driver.wait(300) == 0, (workspace / "killed.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    manifest = read_manifest(out_dir)
    assert [row["index"] for row in manifest] == list(range(12))  # each job once
    assert {row["status"] for row in manifest} == {"ok"}
    assert images(out_dir) == NAMES
    for index, name in enumerate(NAMES):
        np.testing.assert_array_equal(pixels(out_dir / name), reference[index], err_msg=name)


def test_an_interrupted_run_run_again_writes_only_the_missing_images(
    workspace, tiny_snapshot, batch_encoder, gate, reference
):
    out_dir = workspace / "interrupted"
    flags = batch_flags(batch_encoder, tiny_snapshot, out_dir, workers=1)
    gate.allow(3)  # three images, then the fourth job waits for its embedding
    log = (workspace / "interrupted.log").open("w")
    command = batch_command(*flags)
    driver = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=batch_env(), cwd=workspace, preexec_fn=with_ctrl_c
    )
    try:
        wait_until(lambda: len(images(out_dir)) == 3, timeout_s=240)
        gate.wait_until_held()
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        assert driver.wait(120) == 130, (workspace / "interrupted.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    first = {name: (out_dir / name).stat() for name in images(out_dir)}
    assert list(first) == NAMES[:3]
    stopped = read_manifest(out_dir)  # the stopped run still lists every job; those it never heard of as failed
    assert [row["index"] for row in stopped] == list(range(12))
    assert {row["status"] for row in stopped[3:]} == {"failed"}
    gate.allow(math.inf)

    finished = run_batch(*flags, cwd=workspace)

    assert finished.returncode == 0, finished.stderr[-4000:]
    assert [row["status"] for row in read_manifest(out_dir)] == ["skipped"] * 3 + ["ok"] * 9
    assert "9 image(s) written, 0 failed, 3 skipped" in finished.stdout
    for name, before in first.items():  # not rewritten: an atomic rewrite would give a new inode
        after = (out_dir / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert images(out_dir) == NAMES
    for index, name in enumerate(NAMES):
        np.testing.assert_array_equal(pixels(out_dir / name), reference[index], err_msg=name)


def test_a_corrupt_reference_fails_its_job_alone_and_the_others_complete(workspace, tiny_snapshot, batch_encoder):
    folder = workspace / "corrupt"
    folder.mkdir()
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    shutil.copy(workspace / "reference.png", folder / "reference.png")
    jobs = [
        {"prompt": "a kite", "height": 64, "width": 64, "steps": 2},
        {"prompt": "a kite, edited", "images": ["corrupt.png"], "height": 64, "width": 64, "steps": 2},
        {"prompt": "a kite, restyled", "images": ["reference.png"], "height": 64, "width": 64, "steps": 2},
    ]
    write_jobs(folder / "prompts.jsonl", jobs)
    out_uri = (folder / "out").as_uri()  # file://...: written through pyarrow, as s3:// or gs:// would be

    finished = run_batch(*batch_flags(batch_encoder, tiny_snapshot, out_uri, workers=1), cwd=folder)

    assert finished.returncode == 3, finished.stderr[-4000:]
    [line] = error_lines(finished.stderr)
    assert "prompts.jsonl:2" in line and "cannot read reference image" in line
    manifest = read_manifest(folder / "out")
    assert [row["status"] for row in manifest] == ["ok", "failed", "ok"]
    assert "cannot read reference image" in manifest[1]["error"] and "\n" not in manifest[1]["error"]
    assert manifest[0]["output"] == f"{out_uri}/image-000000.png"
    assert images(folder / "out") == ["image-000000.png", "image-000002.png"]
    assert "2 image(s) written, 1 failed, 0 skipped" in finished.stdout


def test_an_encoder_that_stops_answering_mid_run_stops_the_run_in_one_line(
    workspace, tiny_snapshot, batch_encoder, gate
):
    out_dir = workspace / "encoder-lost"
    gate.allow(2)  # two images, then the encoder answers no more
    flags = [*batch_flags(batch_encoder, tiny_snapshot, out_dir, workers=1), "--timeout", "3"]

    finished = run_batch(*flags, cwd=workspace)

    assert finished.returncode == 3, finished.stderr[-4000:]  # flux2-generate's code for an encoder out of reach
    [line] = error_lines(finished.stderr)
    assert f"the encoder at {batch_encoder.target} did not answer within 3 s" in line
    statuses = [row["status"] for row in read_manifest(out_dir)]
    assert statuses[:2] == ["ok", "ok"] and set(statuses[2:]) == {"failed"}
    assert images(out_dir) == NAMES[:2]


def test_a_worker_that_cannot_load_the_model_stops_the_run_in_one_line(workspace, tiny_snapshot, batch_encoder):
    broken = workspace / "broken-snapshot"
    shutil.copytree(tiny_snapshot, broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")  # the driver reads only config.json; each worker loads the weights
    out_dir = workspace / "broken"
    scratch = workspace / "broken-tmp"
    folders = workers_temp_folder(scratch)

    finished = run_batch(*batch_flags(batch_encoder, broken, out_dir, workers=1), cwd=workspace, env=folders)

    assert finished.returncode == 1, finished.stderr[-4000:]
    [line] = error_lines(finished.stderr)
    assert "a worker on " in line and "cannot start" in line and "diffusion_pytorch_model.safetensors" in line
    assert {row["status"] for row in read_manifest(out_dir)} == {"failed"}
    assert images(out_dir) == []
    assert list(scratch.glob("flux2-batch-*")) == []  # nothing left behind by the worker that never ran a job
