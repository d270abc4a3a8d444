"""The output folder of a batch: a local path, or a URI of any filesystem pyarrow opens (`s3://`, `gs://`, `hdfs://`,
`file://`).

Every file in it is whole or absent, so a file that exists is a finished image and a rerun may skip its job:
a local folder is written through `atomic_files` (temporary file, fsync, rename); on other filesystems a file is
streamed under a temporary name beside its own and then moved into place. An object store's move is a copy, but a
put that failed half-way could otherwise leave a partial object under the final name. Temporary names start with
`.` and end in `.tmp`, so they never look like an output.

Nothing is written outside the folder: a name whose way passes a symbolic link in it is refused when the run is
planned (`check_name`), and a local write opens each folder on the way without following links
(`atomic_files.write_bytes_beneath`), so a link planted after planning fails that job's write instead of redirecting
it. A `file://` folder, written through pyarrow (which follows links), is checked again just before each write.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from diffusion_client.atomic_files import write_bytes_beneath
from diffusion_client.errors import InputError


@dataclass(frozen=True)
class OutputDir:
    """Where images and the manifest go; picklable, so each Ray worker writes there itself."""

    text: str  # as messages and the manifest name it: the absolute local path, or the URI as given
    local: Path | None = None  # the folder, when it is on this machine's filesystem
    filesystem: Any = None  # a pyarrow.fs.FileSystem otherwise
    base: str = ""  # the folder's path on `filesystem`

    @classmethod
    def parse(cls, text: str) -> OutputDir:
        """`--out-dir`: a URI (anything with `://`) goes to pyarrow; anything else is a local path."""
        if "://" not in text:
            folder = Path(text).expanduser().absolute()
            return cls(str(folder), local=folder)
        from pyarrow import fs

        try:
            filesystem, base = fs.FileSystem.from_uri(text)
        except (OSError, ValueError) as error:  # pyarrow: ArrowInvalid is a ValueError, its I/O errors OSErrors
            raise InputError(f"--out-dir {text}: pyarrow cannot open it: {error}") from None
        return cls(text.rstrip("/"), filesystem=filesystem, base=base.rstrip("/"))

    def prepare(self) -> None:
        """Make the folder if it is missing; refuse a file or an unwritable folder before anything runs."""
        try:
            if self.local is not None:
                if self.local.exists() and not self.local.is_dir():
                    raise InputError(f"--out-dir {self.text} is a file, not a folder")
                self.local.mkdir(parents=True, exist_ok=True)
                if not os.access(self.local, os.W_OK | os.X_OK):
                    raise InputError(f"--out-dir {self.text} is not writable")
                return
            from pyarrow import fs

            if self.filesystem.get_file_info(self.base).type == fs.FileType.File:
                raise InputError(f"--out-dir {self.text} is a file, not a folder")
            self.filesystem.create_dir(self.base, recursive=True)
        except OSError as error:
            raise InputError(f"--out-dir {self.text}: cannot make it: {error.strerror or error}") from None

    def existing(self) -> set[str]:
        """Names (relative, `/`-separated) of the files already in the folder, from one listing."""
        try:
            if self.local is not None:
                return {
                    Path(folder, name).relative_to(self.local).as_posix()
                    for folder, _, names in os.walk(self.local)
                    for name in names
                }
            from pyarrow import fs

            selector = fs.FileSelector(self.base, recursive=True, allow_not_found=True)
            found = self.filesystem.get_file_info(selector)
            return {posixpath.relpath(info.path, self.base) for info in found if info.type == fs.FileType.File}
        except OSError as error:
            raise InputError(f"--out-dir {self.text}: cannot list it: {error.strerror or error}") from None

    def path(self, name: str) -> str:
        """`name`'s full path or URI, as the manifest records it."""
        return str(self.local / name) if self.local is not None else f"{self.text}/{name}"

    def check_name(self, name: str) -> None:
        """Refuse (`InputError`) an output name whose way passes a symbolic link in the folder, or that names a folder.

        Checked on this machine's filesystem for a local or `file://` folder; an object store has no links.
        """
        root = self._on_this_machine()
        if root is None or not root.is_dir():  # a folder missing is made by `prepare`, a file refused there
            return
        where = root
        parts = PurePosixPath(name).parts
        for depth, part in enumerate(parts, start=1):
            where = where / part
            try:
                mode = os.lstat(where).st_mode
            except FileNotFoundError:
                return  # made by the write, as a real folder
            except OSError as error:
                raise InputError(f'"out" {name}: cannot check {where}: {error.strerror or error}') from None
            if stat.S_ISLNK(mode):
                raise InputError(
                    f'"out" {name} passes the symbolic link {where} (to {os.readlink(where)}); outputs are written '
                    "only in real folders inside --out-dir"
                )
            if depth == len(parts) and stat.S_ISDIR(mode):
                raise InputError(f'"out" {name} is a folder in --out-dir; give a file name')

    def exists(self, name: str) -> bool:
        if self.local is not None:
            return (self.local / name).is_file()
        from pyarrow import fs

        return bool(self.filesystem.get_file_info(self._remote(name)).type == fs.FileType.File)

    def write(self, name: str, data: bytes) -> None:
        """`data` as the file `name`, whole or not at all; raises OSError as the filesystem does, and for a name
        whose way a symbolic link has taken since it was checked."""
        if self.local is not None:
            write_bytes_beneath(self.local, name, data)
            return
        if self._on_this_machine() is not None:
            try:
                self.check_name(name)
            except InputError as error:
                raise OSError(str(error)) from None
        final = self._remote(name)
        folder, file_name = posixpath.split(final)
        stem = file_name.encode()[:200].decode(errors="ignore")  # the temporary name fits NAME_MAX too
        temporary = posixpath.join(folder, f".{stem}.{secrets.token_hex(4)}.tmp")
        self.filesystem.create_dir(folder, recursive=True)
        try:
            with self.filesystem.open_output_stream(temporary) as stream:
                stream.write(data)
            self.filesystem.move(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise

    def _remote(self, name: str) -> str:
        return posixpath.join(self.base, name)

    def _on_this_machine(self) -> Path | None:
        """The folder's path on this machine's filesystem: a local folder, or a `file://` URI's."""
        if self.local is not None:
            return self.local
        from pyarrow import fs

        return Path(self.base) if isinstance(self.filesystem, fs.LocalFileSystem) else None
