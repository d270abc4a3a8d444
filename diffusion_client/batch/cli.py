"""`flux2-batch`: a prompts file over a Ray cluster, every worker fed by one shared flux2-encoder service.

    flux2-batch --prompts prompts.jsonl --encoder encoder-box:50051 --model /models/FLUX.2-dev --out-dir s3://b/run

Before any worker starts, the driver reads and checks every line (all bad lines reported together, exit 2), lists
the images already written (a rerun does only the rest), and asks the encoder whether it can feed this model and
take each prompt. Then one worker per GPU (or `--workers N`) generates, marks and writes the images, and the driver
writes `results.jsonl` beside them. Exit codes: 0 every job written or already there; 2 bad flags or lines, nothing
run; 3 some jobs failed (the manifest says which and why), or the Ray head out of reach; otherwise the code
`flux2-generate` gives the failure that stopped the run (3 encoder unreachable, 4 wrong model, 1 anything else),
130 interrupted (Ctrl-C or SIGTERM).

Like `flux2-generate`, this module imports nothing heavy, so `--help` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_client.batch.head import HeadUnreachableError
from diffusion_client.batch.results import MANIFEST
from diffusion_client.commands import (
    add_cache_argument,
    add_quantize_argument,
    note,
    one_line,
    report,
    run_command,
    whole_number,
)
from diffusion_client.encoder_client.flags import add_encoder_arguments, open_encoder, token_from_args
from diffusion_client.errors import InputError
from diffusion_client.generation.cli import add_job_arguments, add_upsample_arguments, job_defaults
from diffusion_client.provenance.flags import add_marking_arguments, marking_from_args
from shared.allocator import tune_allocator
from shared.printable import OneLineParser

if TYPE_CHECKING:
    from diffusion_client.batch.outputs import OutputDir
    from diffusion_client.batch.plan import BadLinesError, PlannedJob
    from diffusion_client.batch.results import JobResult
    from diffusion_client.encoder_client.client import RemoteTextEncoder
    from diffusion_client.provenance.marking import Marker

PROG = "flux2-batch"
SOME_JOBS_FAILED = 3
HEAD_UNREACHABLE = 3  # as flux2-generate's code for an encoder out of reach
NF4_ON_CPU = "--quantize nf4 needs CUDA workers (bitsandbytes' NF4 runs on GPUs); use --quantize none on CPU"


positive_int = whole_number(1)  # `--workers`, `--cpus-per-worker`


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Generate a prompts file's FLUX.2 images on a Ray cluster, with prompt embeddings from a shared "
        "flux2-encoder server. See docs/batch.md.",
    )
    parser.add_argument(
        "--prompts",
        required=True,
        type=Path,
        help="one prompt per line, or JSONL with per-line settings, as flux2-generate --prompts takes; a line's "
        '"out" is a path inside --out-dir',
    )
    add_encoder_arguments(parser)
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="FLUX.2 snapshot (transformer/, vae/), at this path on this machine and on every worker's node",
    )
    parser.add_argument(
        "--out-dir",
        required=True,
        help="folder for image-000000.png, ... and results.jsonl: a local path (on a cluster, one all nodes share) "
        "or a URI pyarrow opens (s3://bucket/run, gs://..., hdfs://...)",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="the Ray cluster's head, HOST:PORT, or `local` for a fresh local Ray (default: $RAY_ADDRESS, else a "
        "cluster `ray start` began on this machine, else a new local one)",
    )
    parser.add_argument(
        "--workers", type=positive_int, help="workers, each holding one pipeline (default: one per GPU, or 1 on CPU)"
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=positive_int,
        default=1,
        help="CPUs Ray reserves for each worker, and its torch threads (marking and writing run on them too; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="where workers generate: one GPU each, or CPU; auto = cuda when the cluster has GPUs",
    )
    add_quantize_argument(parser)
    add_job_arguments(parser)
    add_upsample_arguments(parser)
    add_cache_argument(parser, "each worker's memory for embeddings already fetched; 0 turns it off")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "--quiet", action="store_true", help="no `wrote PATH` line per image; errors and the summary only"
    )
    talk.add_argument(
        "--verbose", action="store_true", help="Ray's own log lines and progress on stderr too (off by default)"
    )
    add_marking_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    with _terminate_as_interrupt():
        return _run(args)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a pod stopping, `kill`) ends the run as Ctrl-C does: manifest written, Ray stopped, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signal: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from diffusion_client.batch.runner import import_ray

    import_ray()  # without the extra, say so before reading anything
    if args.quantize == "nf4" and args.device == "cpu":
        raise InputError(NF4_ON_CPU)
    token = token_from_args(args)
    marking = marking_from_args(args)
    from shared.library_logs import quiet_model_libraries

    quiet_model_libraries()

    from diffusion_client.batch.outputs import OutputDir
    from diffusion_client.batch.plan import BadLinesError, plan_jobs
    from diffusion_client.generation.pipeline import model_kind, read_component_config, size_multiple
    from diffusion_client.provenance.marking import Marker

    outputs = OutputDir.parse(args.out_dir)
    kind = model_kind(args.model)
    transformer_config = read_component_config(args.model, "transformer")
    try:
        multiple = size_multiple(read_component_config(args.model, "vae"))
        planned = plan_jobs(args.prompts, job_defaults(args, "", Path()), multiple, outputs.check_name)
    except BadLinesError as bad:
        return _bad_lines(bad, args.prompts)
    outputs.prepare()
    done = outputs.existing()
    pending = [job for job in planned if job.name not in done]
    results = {job.index: job.result(outputs.path(job.name), "skipped") for job in planned if job.name in done}
    marker = Marker.start(marking)  # a certificate c2pa refuses fails here, before any worker loads
    if pending:
        with open_encoder(args, token) as encoder:  # one that cannot feed this model fails here, once
            try:
                _check_encoder(encoder, kind.pipeline, transformer_config, pending)
            except BadLinesError as bad:
                return _bad_lines(bad, args.prompts)
    started = time.perf_counter()
    code = 0
    try:
        if pending:
            code = _run_on_cluster(args, token, marker, outputs, pending, results)
    except HeadUnreachableError as error:
        report(error, PROG)
        code = HEAD_UNREACHABLE
    finally:  # interrupted or not, the manifest says what was done
        seconds = time.perf_counter() - started
        _write_manifest(outputs, planned, results, "not run: the run stopped first")
    print(f"{_summary(results, seconds)}; manifest {outputs.path(MANIFEST)}", flush=True)
    if code:
        return code
    if any(result.status == "failed" for result in results.values()):
        return SOME_JOBS_FAILED
    for text in marker.success_notes():  # never before an error line
        note(text, PROG)
    return 0


def _bad_lines(bad: BadLinesError, prompts: Path) -> int:
    for message in bad.messages:
        report(message, PROG)
    note(f"{len(bad.messages)} bad line(s) in {prompts}; nothing was generated", PROG)
    return 2


def _check_encoder(
    encoder: RemoteTextEncoder, pipeline: str, transformer_config: dict[str, object], pending: list[PlannedJob]
) -> None:
    """What preflight asks of the encoder, once for the run: it feeds this transformer, takes each prompt (else
    `BadLinesError` naming every line too long for it), and upsamples if asked."""
    from diffusion_client.batch.plan import BadLinesError
    from diffusion_client.generation.pipeline import joint_attention_dim
    from diffusion_client.generation.preflight import check_prompt_fits, offered_upsampling

    encoder.select_model(pipeline, joint_attention_dim(transformer_config))
    too_long = []
    for job in pending:
        try:
            check_prompt_fits(job.job, encoder)
        except InputError as error:
            too_long.append(str(error))
    if too_long:
        raise BadLinesError(too_long)
    upsampling = [job.job for job in pending if job.job.upsample]
    if upsampling:
        offered_upsampling(encoder, upsampling)


def _run_on_cluster(
    args: argparse.Namespace,
    token: str | None,
    marker: Marker,
    outputs: OutputDir,
    pending: list[PlannedJob],
    results: dict[int, JobResult],
) -> int:
    """Run `pending` on the cluster, filling `results` as jobs finish; the exit code of a failure that stopped it."""
    from diffusion_client.batch.runner import cluster, run_jobs, size_pool
    from diffusion_client.batch.worker import WorkerConfig
    from diffusion_client.generation.pipeline import resolve_quantize

    with cluster(args.ray, args.connect_timeout, args.verbose) as ray:
        pool = size_pool(ray, args.device, args.workers, args.cpus_per_worker)
        pool = dataclasses.replace(pool, workers=min(pool.workers, len(pending)))  # no worker loads for nothing
        quantize = resolve_quantize(args.quantize, pool.device)
        if quantize == "nf4" and pool.device == "cpu":  # --device auto on a cluster without GPUs
            raise InputError(NF4_ON_CPU)
        config = WorkerConfig(
            model_path=args.model.absolute(),
            model_name=args.model.resolve().name,
            device=pool.device,
            quantize=quantize,
            threads=pool.cpus_per_worker,
            encoder_args=_shipped_encoder_args(args),
            token=token,
            encoder_model=args.encoder_model,
            cache_bytes=args.cache_mib * 2**20,
            marking=marker.options,
            credentials=marker.signer.credentials if marker.signer is not None else None,
            outputs=outputs,
        )
        if not args.quiet:
            note(f"{len(pending)} job(s) for {pool.workers} {pool.device} worker(s)", PROG)
        with contextlib.closing(run_jobs(ray, pending, config, pool)) as finished:  # closed: Ray Data stops
            for result in finished:
                results[result.index] = result
                if result.status == "failed":
                    report(result.error, PROG)
                elif not args.quiet:
                    print(f"wrote {one_line(result.output)}", flush=True)
                if result.stop_code:
                    return result.stop_code
    return 0


def _shipped_encoder_args(args: argparse.Namespace) -> argparse.Namespace:
    """The encoder flags as workers rebuild the client from them (`open_encoder`), TLS files read here."""
    shipped = argparse.Namespace(
        encoder=args.encoder,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        tls=args.tls,
        encoder_model=args.encoder_model,
    )
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(args, name)
        try:
            setattr(shipped, name, None if path is None else path.read_bytes())
        except OSError as error:
            raise InputError(f"cannot read --{name.replace('_', '-')} {path}: {error.strerror or error}") from None
    return shipped


def _write_manifest(
    outputs: OutputDir, planned: list[PlannedJob], results: dict[int, JobResult], missing_reason: str
) -> None:
    from diffusion_client.batch.results import manifest_bytes

    for job in planned:
        if job.index not in results:
            results[job.index] = job.result(outputs.path(job.name), "failed", error=missing_reason)
    try:
        outputs.write(MANIFEST, manifest_bytes(results.values()))
    except OSError as error:
        report(f"cannot write {outputs.path(MANIFEST)}: {error.strerror or error}", PROG)


def _summary(results: dict[int, JobResult], seconds: float) -> str:
    from diffusion_client.batch.results import summary

    return summary(results.values(), seconds)


def main(argv: list[str] | None = None) -> int:
    tune_allocator()
    try:
        return run_command(PROG, build_parser(), run, argv)
    finally:
        if argv is None:  # the command's own process, about to exit
            # Exiting, the interpreter's collector walks everything torch, Ray and diffusers made: 4 to 5 s on a busy
            # 2-core machine, after Ctrl-C or SIGTERM too. Frozen objects are skipped (0.5 s), and the OS frees all.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
