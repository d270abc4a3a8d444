"""The Ray actor of `flux2-batch`: one pipeline on its GPU (or the CPU) and one `RemoteTextEncoder` to the shared
encoder, generating one job at a time exactly as `flux2-generate` does (`ImageGenerator.prepare`, then `run`).

A worker returns a result for every job it is given and never raises: Ray Data would only hand the driver a
wrapped traceback. A job that fails on its own (a reference that does not decode, a prompt the encoder refuses)
is a failed result; a failure that concerns every job (the encoder out of reach, a model that does not load) is a
failed result with a `stop_code`, on which the driver stops the run. A worker that dies is Ray's business: its
task is retried on a restarted actor, which skips the images the dead one had finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_client.batch.outputs import OutputDir
from diffusion_client.batch.plan import PlannedJob, decode_job
from diffusion_client.batch.results import JobResult
from diffusion_client.errors import InputError, failure_text

if TYPE_CHECKING:
    import numpy as np

    from diffusion_client.generation.generator import ImageGenerator
    from diffusion_client.generation.pipeline import Quantize
    from diffusion_client.provenance.authority import SigningCredentials
    from diffusion_client.provenance.marking import MarkingOptions


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, made by the driver; files a node may lack (TLS, signing keys) travel as bytes."""

    model_path: Path  # the same snapshot at the same path on every node (a shared volume)
    model_name: str  # as images' metadata names the model
    device: str  # "cuda" (the GPU Ray gave this actor) or "cpu"
    quantize: Quantize
    threads: int  # torch's CPU threads: float results depend on how work is split between threads
    encoder_args: argparse.Namespace  # the `add_encoder_arguments` flags, TLS files read into bytes
    token: str | None
    encoder_model: str | None
    cache_bytes: int
    marking: MarkingOptions
    credentials: SigningCredentials | None  # the driver's, so every image of a run is signed by one signer
    outputs: OutputDir


class BatchWorker:
    """The callable class `map_batches` runs on each actor: a batch of encoded jobs in, their results out."""

    def __init__(self, config: WorkerConfig) -> None:
        self.outputs = config.outputs
        self.generator: ImageGenerator | None = None
        self.broken: tuple[str, int] | None = None  # why this worker cannot generate, and the exit code
        try:
            self.generator = _start(config)
        except Exception as error:  # reported once per job it was given, with the exit code that stops the run
            from diffusion_client.commands import exit_code

            self.broken = (f"a worker on {socket.gethostname()} cannot start: {failure_text(error)}", exit_code(error))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        results = [self.run_job(decode_job(str(text))).to_json() for text in batch["job"]]
        return {"result": np.array(results, dtype=object)}

    def run_job(self, planned: PlannedJob) -> JobResult:
        output = self.outputs.path(planned.name)
        if self.broken is not None:
            message, code = self.broken
            return planned.result(output, "failed", error=message, stop_code=code)
        started = time.perf_counter()
        try:
            if self.outputs.exists(planned.name):  # an earlier attempt of this task wrote it before its worker died
                return planned.result(output, "skipped")
            error = self._generate(planned)
        except Exception as stop:  # not this job's failure but the run's, as `flux2-generate` stops on it
            from diffusion_client.commands import exit_code

            return planned.result(output, "failed", error=failure_text(stop), stop_code=exit_code(stop))
        seconds = time.perf_counter() - started
        return planned.result(output, "ok" if error is None else "failed", seconds, error)

    def _generate(self, planned: PlannedJob) -> str | None:
        """Generate, mark and write one job; its own failure as one line, or None."""
        from diffusion_client.generation.generator import FailedJob

        assert self.generator is not None
        # The image is marked and written here first, by `flux2-generate`'s own code, then put in the output folder
        # by `OutputDir.write`, which never follows a link out of it. A folder per job: Ray ends an actor's process
        # without running its finalizers, so a folder kept for the actor's life would outlive every run.
        with tempfile.TemporaryDirectory(prefix="flux2-batch-") as scratch:
            job = dataclasses.replace(planned.job, out=Path(scratch) / planned.name)
            try:
                prepared = self.generator.prepare([job])  # decodes its references, checks its LoRAs
            except InputError as error:  # already names the line
                return str(error)
            [outcome] = self.generator.run(prepared)  # to the end: its threads finish with it
            if isinstance(outcome, FailedJob):
                return str(outcome)
            try:
                self.outputs.write(planned.name, job.out.read_bytes())
            except OSError as error:
                return job.describe(f"cannot write {self.outputs.path(planned.name)}: {_os_error_text(error)}")
        return None


def _os_error_text(error: OSError) -> str:
    """`strerror: filename` (or the message) without Python's `[Errno N]`."""
    if error.strerror is None:
        return str(error)
    return f"{error.filename}: {error.strerror}" if error.filename else error.strerror


def _start(config: WorkerConfig) -> ImageGenerator:
    """The worker's `ImageGenerator`: the pipeline loaded, the encoder client made, the driver's signer."""
    import torch

    from shared.library_logs import quiet_model_libraries

    torch.set_num_threads(config.threads)  # Ray sets OMP_NUM_THREADS to the actor's CPUs; pin torch to the same
    quiet_model_libraries()

    from diffusion_client.encoder_client.flags import open_encoder
    from diffusion_client.generation.generator import ImageGenerator
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline
    from diffusion_client.provenance.manifest import ManifestSigner
    from diffusion_client.provenance.marking import Marker

    signer = ManifestSigner(config.credentials) if config.credentials is not None else None
    marker = Marker(config.marking, signer)
    pipeline = load_pipeline(PipelineConfig(config.model_path, device=config.device, quantize=config.quantize))
    encoder = open_encoder(config.encoder_args, config.token, cache_bytes=config.cache_bytes)
    # References are named by file name, as the page names uploads: not the driver's folders in every image.
    return ImageGenerator(
        pipeline,
        encoder,
        model_name=config.model_name,
        progress=False,
        marker=marker,
        reference_label=lambda path: path.name,
    )
