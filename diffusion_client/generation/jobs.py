"""What to generate: one `GenerationJob` per image, from CLI flags or a `--prompts` file.

A prompts file holds one prompt per line, or JSON objects (JSONL) with per-line settings:
`{"prompt": "...", "seed": 7, "steps": 20, "guidance": 3.5, "height": 768, "width": 1024,
"images": ["ref.png"], "out": "name.png", "upsample": true, "upsample_temperature": 0.15,
"loras": [{"path": "style.safetensors", "scale": 0.8}]}` (a line's "loras" replace the CLI's `--lora`s). Blank lines and
lines starting with `#` are skipped. Lines end at `\n` (a `\r` before it is stripped); the file is read a line at a
time, and a line over `MAX_LINE_BYTES` or not UTF-8 is a bad line, so a huge file never sits in memory whole.
Parsing checks each value's type; whether the values make a valid job is `preflight`'s business.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from diffusion_client.encoder_client.upsampling import DEFAULT_UPSAMPLE_TEMPERATURE
from diffusion_client.errors import InputError
from diffusion_client.lora.specs import LoraSpec


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
    # Rewrite the prompt on the encoder server first (seeded with `seed`), and generate from the rewrite.
    upsample: bool = False
    upsample_temperature: float = DEFAULT_UPSAMPLE_TEMPERATURE
    loras: tuple[LoraSpec, ...] = ()  # applied to the DiT for this image, at their scales
    # Where the job came from (`prompts.jsonl:3`), to start messages about it; not a setting.
    origin: str | None = field(default=None, compare=False)

    def describe(self, message: str) -> str:
        """`message` about this job, prefixed with where it came from when known."""
        return f"{self.origin}: {message}" if self.origin else message


SETTINGS = frozenset(field.name for field in dataclasses.fields(GenerationJob)) - {"origin"}
_NUMBERS: dict[str, type] = {
    "seed": int,
    "steps": int,
    "height": int,
    "width": int,
    "guidance": float,
    "upsample_temperature": float,
}


def numbered_output(out: Path, index: int) -> Path:
    """`image.png` -> `image-000.png`: one file per line of a prompts file."""
    return out.with_name(f"{out.stem}-{index:03d}{out.suffix or '.png'}")


def jobs_from_file(path: Path, defaults: GenerationJob) -> list[GenerationJob]:
    """Parse a prompts file; each line inherits the CLI's settings and may override them."""
    jobs: list[GenerationJob] = []
    for number, text in prompt_lines(path):
        if isinstance(text, InputError):
            raise text
        jobs.append(job_from_line(f"{path}:{number}", text, defaults, numbered_output(defaults.out, len(jobs))))
    if not jobs:
        raise InputError(f"prompts file {path} has no prompts")
    return jobs


MAX_LINE_BYTES = 1 << 20  # 1 MiB: 50 times the encoder's default prompt limit, and bounded memory per line


def prompt_lines(path: Path) -> Iterator[tuple[int, str | InputError]]:
    """The file's lines that hold a job, stripped, with their 1-based line numbers (blanks and `#` skipped), read one
    at a time. A line that cannot be a job's text (over `MAX_LINE_BYTES`, not UTF-8) comes as the `InputError`
    naming it, so a caller may report it and read on; a file that cannot be read raises `InputError`."""
    try:
        with path.open("rb") as file:
            number = 0
            while line := file.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    _skip_rest_of_line(file)
                    yield number, InputError(f"{path}:{number}: the line is over {MAX_LINE_BYTES:,} bytes")
                    continue
                try:
                    text = line.decode("utf-8").strip()
                except UnicodeDecodeError as error:
                    yield number, InputError(f"{path}:{number}: not UTF-8 text (byte {error.start + 1} of the line)")
                    continue
                if text and not text.startswith("#"):
                    yield number, text
    except OSError as error:
        raise InputError(f"cannot read prompts file {path}: {error.strerror or error}") from error


def _skip_rest_of_line(file: BinaryIO) -> None:
    """Read past the end of the current line, a bounded piece at a time."""
    while (piece := file.readline(MAX_LINE_BYTES)) and not piece.endswith(b"\n"):
        pass


def job_from_line(where: str, text: str, defaults: GenerationJob, out: Path) -> GenerationJob:
    """One line's job: a plain prompt, or a JSON object's settings over `defaults`; `out` unless the line names one.

    Raises `InputError` naming `where` (`prompts.jsonl:3`) for a line that does not parse.
    """
    settings: dict[str, Any] = {"out": out, "origin": where}
    if text.startswith("{"):
        settings.update(_parse_json_line(where, text))
    else:
        settings["prompt"] = text
    return dataclasses.replace(defaults, **settings)


def _parse_json_line(where: str, text: str) -> dict[str, Any]:
    """The settings one JSONL line gives, each of the right type, or a one-line error naming the line."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not valid JSON ({error.msg})") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
        raise InputError(f'{where}: each JSON line needs a "prompt" string')
    unknown = set(raw) - SETTINGS
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(SETTINGS)}")
    settings: dict[str, Any] = {"prompt": raw["prompt"]}
    for key, kind in _NUMBERS.items():
        if key in raw:
            value = raw[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError(f"{where}: {key!r} must be a finite number, not {json.dumps(value)}")
            if kind is int and not float(value).is_integer():
                raise InputError(f"{where}: {key!r} must be a whole number, not {json.dumps(value)}")
            settings[key] = kind(value)
    if "upsample" in raw:
        if not isinstance(raw["upsample"], bool):
            raise InputError(f"{where}: 'upsample' must be true or false, not {json.dumps(raw['upsample'])}")
        settings["upsample"] = raw["upsample"]
    if "out" in raw:
        if not isinstance(raw["out"], str) or not raw["out"].strip():
            raise InputError(f"{where}: 'out' must be a non-empty path string, not {json.dumps(raw['out'])}")
        settings["out"] = Path(raw["out"])
    if "images" in raw:
        images = raw["images"]
        if not isinstance(images, list) or not all(isinstance(item, str) and item.strip() for item in images):
            raise InputError(f"{where}: 'images' must be a list of path strings, not {json.dumps(images)}")
        settings["images"] = tuple(Path(item) for item in images)
    if "loras" in raw:
        settings["loras"] = _parse_loras(where, raw["loras"])
    return settings


def _parse_loras(where: str, loras: Any) -> tuple[LoraSpec, ...]:
    """`[{"path": "a.safetensors", "scale": 0.8}, ...]` (scale optional, 1 by default)."""
    shape = '\'loras\' must be a list of {"path": "file.safetensors", "scale": 1.0} objects'
    if not isinstance(loras, list):
        raise InputError(f"{where}: {shape}, not {json.dumps(loras)[:80]}")
    specs = []
    for item in loras:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].strip():
            raise InputError(f"{where}: {shape}, not {json.dumps(item)[:80]}")
        if set(item) - {"path", "scale"}:
            raise InputError(
                f'{where}: a LoRA takes only "path" and "scale", not {sorted(set(item) - {"path", "scale"})}'
            )
        scale = item.get("scale", 1.0)
        if not isinstance(scale, int | float) or isinstance(scale, bool):
            raise InputError(f"{where}: LoRA {item['path']}: scale must be a number, not {json.dumps(scale)}")
        try:
            specs.append(LoraSpec(Path(item["path"]), float(scale)))
        except InputError as error:
            raise InputError(f"{where}: {error}") from None
    return tuple(specs)
