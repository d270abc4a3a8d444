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
import socket
import warnings
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

from diffusion_client.batch.plan import PlannedJob, encode_job
from diffusion_client.batch.results import JobResult
from diffusion_client.batch.worker import BatchWorker, WorkerConfig
from diffusion_client.errors import ClientError, InputError

CONNECT_TIMEOUT_S = 10.0  # for the head's port to accept a connection
RAY_MISSING = "flux2-batch runs on Ray, which is not installed: pip install 'flux2-split[ray]'"
MAX_TASK_RETRIES = 3  # retries of a job whose worker died; Ray Data's default, -1, retries forever
MAX_BLOCKS = 10_000  # one job per block up to here; beyond, blocks of several jobs keep the driver's bookkeeping small


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
def cluster(address: str | None) -> Iterator[ModuleType]:
    """Connected to the cluster at `address` (`local`: always a fresh local one); none: `ray.init()`'s own choice,
    $RAY_ADDRESS (as a KubeRay RayJob sets it) or a `ray start` cluster on this machine, else a new local one.
    Disconnecting ends this run's actors; a local cluster it started stops with it."""
    ray = import_ray()
    if address not in (None, "local", "auto"):
        _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot reach the Ray cluster at {address or '(default)'}: {error}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a head nothing listens on: `ray.init` would retry it for many minutes, saying little."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address}: give the head's HOST:PORT (as `ray start --head` prints it), or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {reason}; is `ray start --head` running there?"
        ) from None


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
