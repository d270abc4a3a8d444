"""Reading a request's body into fields and reference images: JSON for generations, multipart for edits.

The body's size and arrival time are already bounded (`body_limits`); here a multipart form is further held to
`max_references` file parts and 64 fields, a field appearing twice is refused (which copy would count?), and each
uploaded image is written to a folder of the request's own, refused past `max_image_bytes`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from diffusion_client.serve.api_errors import bad_request, too_large
from shared.printable import printable_line

IMAGE_PARTS = ("image", "image[]")  # one file as `image`, a list as repeated `image[]` (how the SDK sends them)
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 256 * 1024  # a prompt of OpenAI's 32,000 characters, four bytes each, and room to spare


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise bad_request(f"'{printable_line(name, 80)}' is given twice", name[:80], code="duplicate_parameter")
        fields[name] = value
    return fields


def _no_constant(name: str) -> None:
    raise bad_request(f"the body holds {name}, which is not JSON; send a finite number", code="invalid_json")


async def json_fields(request: Request) -> dict[str, Any]:
    """The body's JSON object; a field given twice, NaN or Infinity is refused."""
    raw = await request.body()
    try:
        body = json.loads(raw, object_pairs_hook=_unique, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
        raise bad_request(f"the body is not valid JSON ({str(error)[:100]})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object of request fields", code="invalid_json")
    return body


async def form_fields(request: Request, max_references: int) -> tuple[dict[str, str], list[UploadFile]]:
    """The form's text fields, and its `image`/`image[]` parts in the order sent."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("/v1/images/edits takes multipart/form-data (image parts and fields)", code="invalid_body")
    try:
        form = await request.form(max_files=max_references, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as error:  # Starlette's own limits: too many files or fields, a field too large
        raise bad_request(
            f"the form was refused: {error.detail}; an edit takes at most {max_references} `image` parts and "
            f"{MAX_FORM_FIELDS} fields",
            code="invalid_body",
        ) from None
    fields: dict[str, str] = {}
    uploads: list[UploadFile] = []
    for name, value in form.multi_items():
        shown = printable_line(name, 80)
        if name in IMAGE_PARTS:
            if not isinstance(value, UploadFile):
                raise bad_request(f"'{shown}' must be an image file part, not a text field", name)
            uploads.append(value)
        elif isinstance(value, UploadFile):
            raise bad_request(f"'{shown}' is a file part; only `image` and `image[]` take files", name)
        elif name in fields:
            raise bad_request(f"'{shown}' is given twice", name, code="duplicate_parameter")
        else:
            fields[name] = value
    return fields, uploads


async def save_references(uploads: list[UploadFile], folder: Path, max_image_bytes: int) -> list[Path]:
    """Each upload written to `folder` as `reference-N` (its name as the image's metadata records it)."""
    paths = []
    for number, upload in enumerate(uploads):
        path = folder / f"reference-{number}"
        size = 0
        with path.open("wb") as out:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > max_image_bytes:
                    raise too_large(f"image {number} is over {max_image_bytes >> 20} MiB; send a smaller file")
                out.write(chunk)
        paths.append(path)
    return paths
