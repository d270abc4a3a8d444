"""From a prompts file to numbered, named jobs, with every bad line found before anything starts.

The lines are `flux2-generate --prompts` lines (`diffusion_client.generation.jobs`), each checked with preflight's own
`check_settings`. What is wrong with each line is collected, so a user fixes them all in one go, not one per run.
The files a line names (reference images, LoRAs) are read by the worker that runs its job: one that does not
decode fails that job alone, and the manifest says so.

Job `i` (0-based, in file order) writes `image-{i:06d}.png` in the output folder, or the line's own `"out"`, a
relative path inside the folder; names are fixed by the file, so a rerun finds the images already written. A name is
checked as text here (no `..`, no NUL, parts of at most 255 bytes) and, by the caller's `check_output`, against the
folder on disk (no symbolic link on the way).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from diffusion_client.batch.results import MANIFEST, JobResult, Status
from diffusion_client.errors import MESSAGE_LIMIT, InputError, printable_line
from diffusion_client.generation.jobs import GenerationJob, job_from_line, prompt_lines
from diffusion_client.generation.preflight import check_settings
from diffusion_client.lora.specs import LoraSpec
from diffusion_client.provenance.formats import format_for


@dataclass(frozen=True)
class PlannedJob:
    index: int  # its place among the file's jobs, from 0
    name: str  # its image, relative to the output folder (`/`-separated)
    job: GenerationJob  # `out` is `name`; the worker places it in the output folder

    def result(
        self, output: str, status: Status, seconds: float = 0.0, error: object = None, stop_code: int = 0
    ) -> JobResult:
        """What became of this job, its image at `output`; `error` made one printable line."""
        message = None if error is None else printable_line(error, MESSAGE_LIMIT)
        return JobResult(self.index, self.job.origin or "", output, self.job.seed, seconds, status, message, stop_code)


class BadLinesError(InputError):
    """Lines of a prompts file that cannot run; `messages` holds one line for each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(f"{len(messages)} bad line(s)")
        self.messages = messages


def default_name(index: int) -> str:
    return f"image-{index:06d}.png"


def plan_jobs(
    prompts: Path,
    defaults: GenerationJob,
    size_multiple: int,
    check_output: Callable[[str], None] = lambda _name: None,
) -> list[PlannedJob]:
    """Every job of `prompts`, checked; raises `BadLinesError` naming every bad line, or `InputError` for the file.

    `check_output` raises `InputError` for an output name the output folder cannot take as it is on disk. Reference
    images and LoRA files are made absolute (against this directory, as `flux2-generate` reads them), since workers
    run elsewhere; images' metadata names references by file name only.
    """
    planned: list[PlannedJob] = []
    errors: list[str] = []
    writers: dict[str, str] = {}  # output name, case-folded (macOS folders ignore case) -> the line writing it
    for index, (number, text) in enumerate(prompt_lines(prompts)):
        where = f"{prompts}:{number}"
        try:
            if isinstance(text, InputError):
                raise text
            job = job_from_line(where, text, defaults, Path(default_name(index)))
            check_settings(job, size_multiple)
            name = output_name(job)
            if (earlier := writers.get(name.casefold())) is not None:
                raise InputError(job.describe(f"writes {name}, as {earlier} does; give each job its own output"))
            writers[name.casefold()] = where
            _described(job, check_output, name)
        except InputError as error:
            errors.append(str(error))
            continue
        job = dataclasses.replace(
            job,
            out=Path(name),
            images=tuple(path.absolute() for path in job.images),
            loras=tuple(dataclasses.replace(spec, path=spec.path.absolute()) for spec in job.loras),
        )
        planned.append(PlannedJob(index, name, job))
    if errors:
        raise BadLinesError(errors)
    if not planned:
        raise InputError(f"prompts file {prompts} has no prompts")
    return planned


def _described(job: GenerationJob, check: Callable[[str], object], name: str) -> None:
    """`check(name)`, its `InputError` prefixed with the job's line."""
    try:
        check(name)
    except InputError as error:
        raise InputError(job.describe(str(error))) from None


MAX_NAME_PART_BYTES = 255  # NAME_MAX of ext4, XFS, APFS, NTFS (in UTF-16 units there)
MAX_NAME_BYTES = 1024  # an S3 or GCS object key's limit, well inside PATH_MAX


def output_name(job: GenerationJob) -> str:
    """The job's output as a clean relative name inside the output folder, or a one-line error."""
    text = str(job.out)
    if "\0" in text:
        raise InputError(job.describe(f'"out" {text!r} holds a NUL character, which no file name can'))
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(job.describe(f'"out" {text!r} is not valid Unicode (a lone surrogate)')) from None
    out = PurePosixPath(job.out.as_posix())
    if out.is_absolute() or ".." in out.parts or not out.name or out.name in (".", ".."):
        raise InputError(job.describe(f'"out" {text!r} must be a relative path inside --out-dir'))
    if size > MAX_NAME_BYTES:
        raise InputError(job.describe(f'"out" is {size:,} bytes long; the limit is {MAX_NAME_BYTES:,}'))
    for part in out.parts:
        if len(part.encode("utf-8")) > MAX_NAME_PART_BYTES:
            raise InputError(
                job.describe(f'"out" has a name of {len(part.encode("utf-8"))} bytes; file systems take at most 255')
            )
    if out.as_posix() == MANIFEST:
        raise InputError(job.describe(f'"out" {MANIFEST} is the manifest\'s name'))
    _described(job, lambda name: format_for(Path(name)), out.name)  # .png, .jpg/.jpeg or .webp (none: PNG)
    return out.as_posix()


def encode_job(planned: PlannedJob) -> str:
    """A planned job as one JSON text: what travels to a worker in the dataset's rows."""
    job = planned.job
    return json.dumps(
        {
            "index": planned.index,
            "name": planned.name,
            "origin": job.origin,
            "prompt": job.prompt,
            "seed": job.seed,
            "steps": job.steps,
            "guidance": job.guidance,
            "height": job.height,
            "width": job.width,
            "images": [str(path) for path in job.images],
            "loras": [{"path": str(spec.path), "scale": spec.scale} for spec in job.loras],
            "upsample": job.upsample,
            "upsample_temperature": job.upsample_temperature,
        }
    )


def decode_job(text: str) -> PlannedJob:
    row: dict[str, Any] = json.loads(text)
    index, name = row.pop("index"), row.pop("name")
    images = tuple(Path(path) for path in row.pop("images"))
    loras = tuple(LoraSpec(Path(spec["path"]), spec["scale"]) for spec in row.pop("loras"))
    return PlannedJob(index, name, GenerationJob(out=Path(name), images=images, loras=loras, **row))
