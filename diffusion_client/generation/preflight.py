"""One preflight for generation jobs: every check a job can fail before any GPU time is spent.

`preflight` validates each job's settings against the model's configs, checks that each output can be
written and that no two jobs write one file, decodes every reference image once, and checks that the
encoder's embeddings fit the transformer, that it takes each prompt's length and, for jobs that upsample their
prompt, that it offers upsampling and takes their reference files (read once, sent later as they are). Each LoRA
file is checked once against the transformer's layers (`diffusion_client.lora.files`). The CLI runs it on the
snapshot's `config.json` files before loading any weights; `ImageGenerator.prepare` runs it on a loaded
pipeline's configs. Only its result, `PreparedJob`s, can be generated.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.encoder_client.upsampling import (
    ReferenceFile,
    check_temperature,
    check_upsample_request,
    max_new_tokens_for,
    read_reference_file,
)
from diffusion_client.errors import InputError
from diffusion_client.generation.jobs import GenerationJob
from diffusion_client.generation.pipeline import joint_attention_dim, size_multiple
from diffusion_client.generation.references import load_reference_image
from diffusion_client.lora.adapters import AppliedLora
from diffusion_client.lora.files import CheckedLora, check_lora, layer_shapes
from diffusion_client.provenance.formats import format_for
from shared.server_info import ServerInfo

MAX_SIDE = 4096
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value
# FLUX.2 recommends 28 to 50; a typo of 10**9 would hold a GPU (and 8 GB of timesteps) for days instead of failing.
MAX_STEPS = 1000


@dataclass(frozen=True)
class PreparedJob:
    """A job that passed preflight, with its reference images decoded (RGB) and, to upsample with, as files."""

    job: GenerationJob
    references: tuple[Image.Image, ...] = ()
    reference_files: tuple[ReferenceFile, ...] = ()  # only for a job that upsamples: its references' file bytes
    loras: tuple[AppliedLora, ...] = ()


def preflight(
    jobs: Sequence[GenerationJob],
    *,
    vae_config: Mapping[str, Any],
    transformer_config: Mapping[str, Any],
    encoder: RemoteTextEncoder,
    pipeline: str = "Flux2Pipeline",
    layers: Sequence[int] = (),
) -> list[PreparedJob]:
    """Check `jobs` (local checks first, then the encoder) and decode their reference images.

    The encoder is pointed at the served model that feeds `pipeline` at the transformer's width (layers: the
    model's defaults). Raises `InputError` for a bad job, `ModelMismatchError` for an encoder that cannot feed
    this transformer, and the encoder's call errors if it cannot be asked.
    """
    multiple = size_multiple(vae_config)
    for job in jobs:
        check_settings(job, multiple)
    check_outputs(jobs)
    decoded: dict[Path, Image.Image] = {}  # one decode per file, however many jobs use it
    prepared = []
    for job in jobs:
        for path in job.images:
            if path not in decoded:
                try:
                    decoded[path] = load_reference_image(path)
                except InputError as error:
                    raise InputError(job.describe(str(error))) from error
        prepared.append(PreparedJob(job, tuple(decoded[path] for path in job.images)))
    prepared = _with_loras(prepared, transformer_config)
    encoder.select_model(pipeline, joint_attention_dim(transformer_config), layers)
    for job in jobs:
        check_prompt_fits(job, encoder)
    return _with_upsampling(prepared, encoder)


def check_prompt_fits(job: GenerationJob, encoder: RemoteTextEncoder) -> None:
    """`InputError` naming the job if its prompt is longer than the encoder takes (the limit `GetInfo` states):
    found here, before any image, rather than as the job's failure once its turn comes."""
    try:
        encoder.check_prompts([job.prompt])
    except InputError as error:
        raise InputError(job.describe(str(error))) from None


def _with_loras(prepared: list[PreparedJob], transformer_config: Mapping[str, Any]) -> list[PreparedJob]:
    """Check each LoRA file once against the transformer's layers (built only if a job names one)."""
    if not any(item.job.loras for item in prepared):
        return prepared
    layers = layer_shapes(transformer_config)
    checked: dict[Path, CheckedLora] = {}
    result = []
    for item in prepared:
        job = item.job
        try:
            for spec in job.loras:
                if spec.path not in checked:
                    checked[spec.path] = check_lora(spec.path, layers)
        except InputError as error:
            raise InputError(job.describe(str(error))) from error
        applied = tuple(AppliedLora(checked[spec.path], spec.scale) for spec in job.loras)
        result.append(dataclasses.replace(item, loras=applied))
    return result


def _with_upsampling(prepared: list[PreparedJob], encoder: RemoteTextEncoder) -> list[PreparedJob]:
    """Check the encoder can upsample what the jobs ask, and read those jobs' reference files once."""
    if not any(item.job.upsample for item in prepared):
        return prepared
    info = offered_upsampling(encoder, [item.job for item in prepared])
    files: dict[Path, ReferenceFile] = {}  # one read per file, however many jobs use it
    checked = []
    for item in prepared:
        job = item.job
        if not job.upsample:
            checked.append(item)
            continue
        try:
            for path in job.images:
                if path not in files:
                    files[path] = read_reference_file(path, str(path), info.max_upsample_image_bytes)
            references = tuple(files[path] for path in job.images)
            check_upsample_request(
                info,
                [job.prompt],
                [references],
                temperature=job.upsample_temperature,
                max_new_tokens=max_new_tokens_for(info),
                seed=job.seed,
            )
        except InputError as error:
            raise InputError(job.describe(str(error))) from error
        checked.append(dataclasses.replace(item, reference_files=references))
    return checked


def offered_upsampling(encoder: RemoteTextEncoder, jobs: Sequence[GenerationJob]) -> ServerInfo:
    """The encoder's upsampling model; `InputError` naming the first job that upsamples if it offers none."""
    info = encoder.upsampling_info()
    upsampling = [job for job in jobs if job.upsample]
    if upsampling and not info.upsampling_available:
        raise InputError(
            upsampling[0].describe(
                f"upsampling asked for, but the encoder at {encoder.target} does not offer it; restart it with "
                "`flux2-encoder serve --enable-upsampling`, or generate without --upsample"
            )
        )
    return info


def check_settings(job: GenerationJob, multiple: int) -> None:
    """Sizes the VAE and patching produce exactly (else the nearest valid values), steps, seed, guidance."""
    for name, value in (("height", job.height), ("width", job.width)):
        if not multiple <= value <= MAX_SIDE:
            raise InputError(job.describe(f"{name} {value} is out of range; use {multiple} to {MAX_SIDE}"))
        if value % multiple:
            lower = value // multiple * multiple
            raise InputError(
                job.describe(f"{name} {value} is not a multiple of {multiple}; use {lower} or {lower + multiple}")
            )
    if job.steps < 1:
        raise InputError(job.describe(f"steps must be at least 1, not {job.steps}"))
    if job.steps > MAX_STEPS:
        raise InputError(job.describe(f"steps must be at most {MAX_STEPS}, not {job.steps}"))
    if not 0 <= job.seed <= MAX_SEED:
        raise InputError(job.describe(f"seed must be between 0 and {MAX_SEED}, not {job.seed}"))
    if not math.isfinite(job.guidance):
        raise InputError(job.describe(f"guidance must be a finite number, not {job.guidance}"))
    try:
        check_temperature(job.upsample_temperature)
    except InputError as error:
        raise InputError(job.describe(str(error))) from error


def check_outputs(jobs: Sequence[GenerationJob]) -> None:
    """Each output is a file path in a format we write, whose folder exists or can be made; no two jobs share one."""
    first_writer: dict[Path, str] = {}  # resolved output -> the job that writes it, as messages name it
    for number, job in enumerate(jobs, start=1):
        out = job.out
        try:
            format_for(out)
        except InputError as error:
            raise InputError(job.describe(str(error))) from None
        if out.is_dir():
            raise InputError(job.describe(f"cannot write {out}: it is a directory; give a file name"))
        folder = _nearest_existing(out.absolute().parent)
        if not folder.is_dir():
            raise InputError(job.describe(f"cannot write {out}: {folder} is not a directory"))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(job.describe(f"cannot write {out}: {folder} is not writable"))
        key = out.resolve()
        if key in first_writer:
            raise InputError(job.describe(f"writes {out}, as {first_writer[key]} does; give each job its own output"))
        first_writer[key] = job.origin or f"job {number}"


def _nearest_existing(folder: Path) -> Path:
    """`folder` or its closest ancestor that exists: where a missing folder would be created."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
