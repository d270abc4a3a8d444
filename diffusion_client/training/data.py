"""The training examples, found and checked before any weights load.

Two layouts, as kohya/ai-toolkit and Hugging Face's imagefolder users already have them:
- a folder of images, each with a same-named `.txt` caption (`dog1.png` + `dog1.txt`); `--instance-prompt`
  captions the images that have none;
- a `metadata.jsonl` with one `{"file_name": "dog1.png", "text": "a photo of sks dog"}` per line, where a line
  may add `"images": ["before.png"]`: reference images, so the LoRA learns an edit (as diffusers'
  `train_dreambooth_lora_flux2_img2img.py` does).
Both layouts follow one rule for every file they name (`data_file`): a regular file whose resolved path stays
inside the data folder (a link or `..` out of it, a FIFO that would hang the read, a folder: refused). Every
image is decoded once here (size capped before decoding) and every caption read as UTF-8; the first problem is
one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from diffusion_client.errors import InputError
from diffusion_client.generation.references import load_reference_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"
MAX_CAPTION_CHARS = 20_000  # the encoder server's default prompt limit
MAX_REFERENCES = 4


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    references: tuple[Path, ...] = ()  # for an edit: the images the edit starts from


def find_examples(data: Path, instance_prompt: str | None) -> list[Example]:
    """The examples in `data` (a folder with `metadata.jsonl`, or images with `.txt` captions), all checked."""
    if not data.is_dir():
        raise InputError(f"training data {data} is not a folder; give a folder of images with captions")
    metadata = data / METADATA_FILE
    if os.path.lexists(metadata):
        examples = _from_metadata(data, data_file(data, metadata, "metadata file"))
    else:
        examples = _from_folder(data, instance_prompt)
    if not examples:
        raise InputError(f"training data {data} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some")
    checked: set[Path] = set()
    for example in examples:
        for path in (example.image, *example.references):
            if path not in checked:
                load_reference_image(path, "training image")  # decoded once here: corrupt files fail now
                checked.add(path)
    return examples


def data_file(data: Path, path: Path, what: str) -> Path:
    """`path` resolved, if it is a regular file inside `data`; else one line naming it. Both layouts' one rule."""
    resolved = path.resolve()
    if not resolved.is_relative_to(data.resolve()):
        raise InputError(f"{what} {path} is outside the data folder {data} (a link or '..' leads out of it)")
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path} is not a regular file (a FIFO, socket or device); training reads files only")
    return resolved


def _from_folder(data: Path, instance_prompt: str | None) -> list[Example]:
    images = sorted(path for path in data.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    examples = []
    for image in images:
        caption_file = image.with_suffix(".txt")  # beside the name listed, wherever a link leads
        image_file = data_file(data, image, "training image")
        if os.path.lexists(caption_file):
            caption = _read_caption(data_file(data, caption_file, "caption"))
        elif instance_prompt is not None:
            caption = instance_prompt
        else:
            raise InputError(
                f"training image {image} has no caption {caption_file.name}; add one, or give --instance-prompt"
            )
        examples.append(Example(image_file, _checked_caption(caption, caption_file)))
    return examples


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        raise InputError(f"caption {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as error:
        raise InputError(f"cannot read caption {path}: {error.strerror or error}") from None


def _checked_caption(caption: str, source: Path | str) -> str:
    if not caption:
        raise InputError(f"caption {source} is empty; describe the image")
    if len(caption) > MAX_CAPTION_CHARS:
        raise InputError(f"caption {source} has {len(caption)} characters; the limit is {MAX_CAPTION_CHARS}")
    return caption


def _from_metadata(data: Path, metadata: Path) -> list[Example]:
    try:
        lines = metadata.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{metadata} is not UTF-8 text; save it as UTF-8") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise InputError(f'{where}: each line needs "file_name" (and "text"), as Hugging Face imagefolder has')
        text = entry.get("text")
        if not isinstance(text, str):
            raise InputError(f'{where}: "text" must be the caption string')
        references = entry.get("images", [])
        if not isinstance(references, list) or not all(isinstance(item, str) for item in references):
            raise InputError(f'{where}: "images" must be a list of file names')
        if len(references) > MAX_REFERENCES:
            raise InputError(f"{where}: {len(references)} reference images; the limit is {MAX_REFERENCES}")
        examples.append(
            Example(
                _named(data, entry["file_name"], where),
                _checked_caption(text.strip(), where),
                tuple(_named(data, item, where) for item in references),
            )
        )
    edits = {bool(example.references) for example in examples}
    if len(edits) > 1:
        raise InputError(f"{metadata}: some lines have reference images and some do not; train edits separately")
    return examples


def _named(data: Path, name: str, where: str) -> Path:
    """A file a metadata line names, by the rule for every data file."""
    try:
        return data_file(data, data / name, "image")
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def dataset_digest(examples: list[Example]) -> str:
    """sha256 over every example's image bytes, references and caption: which data a LoRA was trained on."""
    digest = hashlib.sha256()
    for example in examples:
        for path in (example.image, *example.references):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        digest.update(example.caption.encode())
    return digest.hexdigest()
