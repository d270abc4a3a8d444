"""Files that are either whole or not there: written to a temporary file beside them, synced, then renamed."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO


@contextlib.contextmanager
def replacing(out: Path) -> Iterator[BinaryIO]:
    """A file to write that replaces `out` when the block ends without error; on error, `out` is untouched.

    The temporary file is opened with O_EXCL (never writing through someone else's file) and mode 0o666, so
    the umask decides as `open()` would. Raises OSError as the filesystem does (a full disk, no permission).
    """
    temporary = out.with_name(_temporary_name(out.name))
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


def write_bytes_beneath(folder: Path, name: str, data: bytes) -> None:
    """`data` to `folder/name` (`/`-separated, relative) atomically, never following a symbolic link below `folder`.

    Each folder on the way is opened (or made) relative to the one before with O_NOFOLLOW, and the temporary file is
    written and renamed in the last one by descriptor: a link planted anywhere below `folder`, even while this runs,
    makes the write fail (OSError, ELOOP or ENOTDIR) instead of landing where the link points. A link in the final
    name's place is replaced, as `os.replace` replaces a link, not its target.
    """
    *parents, final = PurePosixPath(name).parts
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parents:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=descriptor)
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(error.errno, "a symbolic link or file, not a folder: not followed", part) from None
                raise
            os.close(descriptor)
            descriptor = inner
        temporary = _temporary_name(final)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o666, dir_fd=descriptor), "wb") as file:
            try:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
                os.replace(temporary, final, src_dir_fd=descriptor, dst_dir_fd=descriptor)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=descriptor)
                raise
        with contextlib.suppress(OSError):  # make the rename durable; not every filesystem syncs a folder
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_name(name: str) -> str:
    """`.stem.1a2b3c4d.tmp` beside `name`, in bytes short enough for NAME_MAX whatever `name` is."""
    stem = Path(name).stem.encode()[:100].decode(errors="ignore")
    return f".{stem}.{secrets.token_hex(4)}.tmp"


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; best effort, as not every filesystem lets a folder be fsynced."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
