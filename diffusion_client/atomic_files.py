"""Files that are either whole or not there: written to a temporary file beside them, synced, then renamed."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replacing(out: Path) -> Iterator[BinaryIO]:
    """A file to write that replaces `out` when the block ends without error; on error, `out` is untouched.

    The temporary file is opened with O_EXCL (never writing through someone else's file) and mode 0o666, so
    the umask decides as `open()` would. Raises OSError as the filesystem does (a full disk, no permission).
    """
    stem = out.stem.encode()[:100].decode(errors="ignore")  # bytes, not characters: any valid `out` fits NAME_MAX
    temporary = out.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(out.parent)


def write_bytes(out: Path, data: bytes) -> None:
    """`data` to `out`, atomically."""
    with replacing(out) as file:
        file.write(data)


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; best effort, as not every filesystem lets a folder be fsynced."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
