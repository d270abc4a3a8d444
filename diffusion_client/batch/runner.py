"""Ray for `flux2-batch`: joining (or starting) a cluster, sizing the pool of workers, and streaming jobs through
it with Ray Data's `map_batches` over an actor pool.

Each job is one row and one batch, so a worker killed mid-run costs at most the image it was making: Ray restarts
the actor (`max_restarts=-1`) and retries its tasks (`max_task_retries`) on the pool, and the retried task skips
images the dead worker had finished. A job that kills every worker it meets stops the run after
`MAX_TASK_RETRIES` retries instead of looping forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from diffusion_client.batch.head import join, probe_head
from diffusion_client.batch.plan import PlannedJob, encode_job
from diffusion_client.batch.results import JobResult
from diffusion_client.batch.worker import BatchWorker, WorkerConfig
from diffusion_client.errors import ClientError, InputError

RAY_MISSING = "flux2-batch runs on Ray, which is not installed: pip install 'flux2-split[ray]'"
MAX_TASK_RETRIES = 3  # retries of a job whose worker died; Ray Data's default, -1, retries forever
MAX_BLOCKS = 10_000  # one job per block up to here; beyond, blocks of several jobs keep the driver's bookkeeping small
SILENT = logging.CRITICAL + 1  # above every level Ray logs at


class ClusterError(ClientError):
    """Ray stopped the run (a task out of retries, the cluster gone); one line, without Ray's traceback."""


def import_ray() -> ModuleType:
    """`ray`, with Ray Data, or the one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]; a bare ray lacks it)
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def cluster(address: str | None, connect_timeout_s: float = 5.0, verbose: bool = False) -> Iterator[ModuleType]:
    """Connected to the cluster at `address` (`local`: always a fresh local one); none: `ray.init()`'s own choice,
    $RAY_ADDRESS (as a KubeRay RayJob sets it) or a `ray start` cluster on this machine, else a new local one.
    A head's address (given, or $RAY_ADDRESS) is probed first, within `connect_timeout_s` (`head.probe_head`).
    Ray's own log lines stay off stderr unless `verbose`. Disconnecting ends this run's actors; a local cluster it
    started stops with it."""
    ray = import_ray()
    options = _quiet_ray(ray, verbose)
    head = address if address not in (None, "local", "auto") else None
    if address in (None, "auto") and os.environ.get("RAY_ADDRESS", "auto") not in ("auto", "local"):
        head = os.environ["RAY_ADDRESS"]
    our_handler = signal.getsignal(signal.SIGTERM)
    try:
        if head is not None:
            probe_head(head, connect_timeout_s)
        with _stderr_closed(not verbose):
            if head is not None:
                join(ray, head, options)
            else:
                ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot reach the Ray cluster at {address or '(default)'}: {error}") from None
    finally:
        if threading.current_thread() is threading.main_thread() and our_handler is not None:
            signal.signal(signal.SIGTERM, our_handler)  # ray.init's own exits with code 15, skipping the manifest
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _stderr_closed(closed: bool) -> Iterator[None]:
    """This process's stderr (fd 2) pointed at /dev/null while `closed`: Ray's C++ core, starting, prints a line of
    its own whatever its log level (naming the level it was given), and nothing of ours is printed meanwhile."""
    if not closed:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    nowhere = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(nowhere, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(nowhere)


def _quiet_ray(ray: ModuleType, verbose: bool) -> dict[str, Any]:
    """Keep Ray's own lines (its Python loggers, its C++ core's, Ray Data's progress, workers' output) off this
    process's stderr unless `verbose`; the `ray.init` options that do their part."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    if verbose:
        return {"logging_level": logging.INFO, "log_to_driver": True}
    # Read by Ray's C++ core when it starts (this driver's, and a local cluster's processes, which log to files).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # its console handler; the file handler stays
            handler.setLevel(SILENT)
    return {"logging_level": SILENT, "log_to_driver": False}


@dataclass(frozen=True)
class Pool:
    workers: int
    device: str  # "cuda" or "cpu"
    cpus_per_worker: int


def size_pool(ray: ModuleType, device: str, workers: int | None, cpus_per_worker: int) -> Pool:
    """How many workers on what: one per GPU of the cluster by default, else one CPU worker; refused if the
    cluster cannot hold them (Ray would wait for resources that never come)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda":
        if not gpus:
            raise InputError("--device cuda, but the Ray cluster has no GPUs; add GPU nodes or use --device cpu")
        workers = workers or gpus
        if workers > gpus:
            raise InputError(f"--workers {workers} needs {workers} GPUs, but the Ray cluster has {gpus}")
    workers = workers or 1
    if workers * cpus_per_worker > cpus:
        raise InputError(
            f"{workers} worker(s) x {cpus_per_worker} CPU(s) need {workers * cpus_per_worker} CPUs, but the Ray "
            f"cluster has {cpus}; lower --workers or --cpus-per-worker"
        )
    return Pool(workers, device, cpus_per_worker)


def run_jobs(
    ray: ModuleType, jobs: Sequence[PlannedJob], config: WorkerConfig, pool: Pool
) -> Generator[JobResult, None, None]:
    """Each job's result, as workers finish them (not in job order)."""
    rows = [{"job": encode_job(planned)} for planned in jobs]
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
    gpus = {"num_gpus": 1} if pool.device == "cuda" else {}
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options this way, but has no other way to bound task retries.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        mapped = dataset.map_batches(
            BatchWorker,
            fn_constructor_kwargs={"config": config},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.workers),
            num_cpus=pool.cpus_per_worker,
            max_restarts=-1,
            max_task_retries=MAX_TASK_RETRIES,
            **gpus,
        )
    try:
        for row in mapped.iter_rows():
            yield JobResult.from_json(str(row["result"]))
    except ray.exceptions.RayError as error:
        raise ClusterError(f"Ray stopped the run: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    """Ray's errors carry a remote traceback after their first line; the first line says what happened."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
