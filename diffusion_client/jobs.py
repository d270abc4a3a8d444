"""What to generate: one `GenerationJob` per image, from CLI flags or a `--prompts` file.

A prompts file holds one prompt per line, or JSON objects (JSONL) with per-line settings:
`{"prompt": "...", "seed": 7, "steps": 20, "guidance": 3.5, "height": 768, "width": 1024,
"images": ["ref.png"], "out": "name.png"}`. Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion_client.errors import GenerationInputError

MAX_SIDE = 4096
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value


@dataclass(frozen=True)
class GenerationJob:
    prompt: str
    out: Path
    seed: int = 0
    steps: int = 28
    guidance: float = 4.0
    height: int = 1024
    width: int = 1024
    images: tuple[Path, ...] = ()

    def check(self, multiple_of: int) -> None:
        """Reject sizes the VAE and patching cannot produce exactly, with the nearest valid values."""
        for name, value in (("height", self.height), ("width", self.width)):
            if not multiple_of <= value <= MAX_SIDE:
                raise GenerationInputError(f"--{name} {value} is out of range; use {multiple_of} to {MAX_SIDE}")
            if value % multiple_of:
                lower = value // multiple_of * multiple_of
                raise GenerationInputError(
                    f"--{name} {value} is not a multiple of {multiple_of}; use {lower or multiple_of} "
                    f"or {lower + multiple_of}"
                )
        if self.steps < 1:
            raise GenerationInputError(f"--steps must be at least 1, not {self.steps}")
        if not 0 <= self.seed <= MAX_SEED:
            raise GenerationInputError(f"--seed must be between 0 and {MAX_SEED}, not {self.seed}")
        if not math.isfinite(self.guidance):
            raise GenerationInputError(f"--guidance must be a finite number, not {self.guidance}")
        for image in self.images:
            if not image.is_file():
                raise GenerationInputError(f"reference image {image} does not exist")


_JOB_FIELDS = {field.name for field in dataclasses.fields(GenerationJob)}


def numbered_output(out: Path, index: int) -> Path:
    """`image.png` -> `image-000.png`: one file per line of a prompts file."""
    return out.with_name(f"{out.stem}-{index:03d}{out.suffix or '.png'}")


def jobs_from_file(path: Path, defaults: GenerationJob) -> list[GenerationJob]:
    """Parse a prompts file; each line inherits the CLI's settings and may override them."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise GenerationInputError(f"cannot read prompts file {path}: {error}") from error
    jobs: list[GenerationJob] = []
    line_of_output: dict[Path, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        index = len(jobs)
        settings: dict[str, Any] = {"out": numbered_output(defaults.out, index)}
        if text.startswith("{"):
            settings.update(_parse_json_line(path, number, text))
        else:
            settings["prompt"] = text
        job = dataclasses.replace(defaults, **settings)
        if job.out in line_of_output:
            raise GenerationInputError(
                f"{path}:{number}: writes {job.out}, as line {line_of_output[job.out]} does; "
                'give each line a different "out"'
            )
        line_of_output[job.out] = number
        jobs.append(job)
    if not jobs:
        raise GenerationInputError(f"prompts file {path} has no prompts")
    return jobs


def _parse_json_line(path: Path, number: int, text: str) -> dict[str, Any]:
    where = f"{path}:{number}"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise GenerationInputError(f"{where}: not valid JSON ({error.msg})") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
        raise GenerationInputError(f'{where}: each JSON line needs a "prompt" string')
    unknown = set(raw) - _JOB_FIELDS
    if unknown:
        raise GenerationInputError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_JOB_FIELDS)}")
    settings: dict[str, Any] = {"prompt": raw["prompt"]}
    for key, kind in (("seed", int), ("steps", int), ("height", int), ("width", int), ("guidance", float)):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise GenerationInputError(f"{where}: {key!r} must be a finite number")
            if kind is int and not float(value).is_integer():
                raise GenerationInputError(f"{where}: {key!r} must be a whole number")
            settings[key] = kind(value)
    if "out" in raw:
        settings["out"] = Path(raw["out"])
    if "images" in raw:
        if not isinstance(raw["images"], list) or not all(isinstance(item, str) for item in raw["images"]):
            raise GenerationInputError(f"{where}: 'images' must be a list of paths")
        settings["images"] = tuple(Path(item) for item in raw["images"])
    return settings
