"""The files the page hands out, each only to whoever made it: the images it made and the uploads it took.

Gradio serves any file in its cache folder to anyone who may open the page and knows the path, so the guard
(`guard.py`) asks the shelf first: a served copy of an image, or an upload, goes only to the browser (or the
cookie-less script, or the logged-in user) it belongs to. `--out-dir` itself is never served; the page shows
each image through a copy (a hard link where it can) in a folder of Gradio's cache.

Uploads are also counted: a browser may keep `per_visitor` bytes of them at a time and the page `total` bytes,
and a browser's uploads go when its last page closes (Gradio deletes the rest an hour after they came).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffusion_client.studio.visitors import Caller

SHELF_PREFIX = "flux2-studio-"  # a folder of Gradio's cache, one per run: the copies of images the page shows
PRUNE_EVERY_S = 60.0  # forgetting files Gradio's hourly clean-up removed


@dataclass(frozen=True)
class Owner:
    visitor: str
    user: str | None


@dataclass
class Upload:
    size: int
    owners: set[Owner] = field(default_factory=set)  # identical files from two browsers are one path


def real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


class Shelf:
    def __init__(self, cache_dir: Path, *, per_visitor: int, total: int) -> None:
        self.upload_dir = real(cache_dir)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.folder = real(tempfile.mkdtemp(prefix=SHELF_PREFIX, dir=self.upload_dir))
        self.per_visitor = per_visitor  # bytes of uploads one visitor may keep
        self.total = total  # bytes of uploads all visitors together may keep
        self._images: dict[Path, Owner] = {}
        self._uploads: dict[Path, Upload] = {}
        self._reserved: dict[str, int] = {}  # bytes of uploads in flight, by visitor
        self._sessions: dict[str, set[str]] = {}  # the open pages (Gradio session hashes) of each visitor
        self._lock = threading.Lock()
        self._pruned = 0.0

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # Images

    def serve(self, image: Path, caller: Caller) -> Path:
        """The copy of `image` (in --out-dir) that Gradio may serve to `caller` and nobody else."""
        copy = self.folder / image.name
        with self._lock:
            self._images.setdefault(copy, Owner(caller.visitor, caller.user))
        if not copy.exists():  # new, or removed by Gradio's hourly clean-up of its cache
            staging = self.folder / f".{image.name}.{os.getpid()}.{threading.get_ident()}"
            try:
                os.link(image, staging)
            except OSError:  # another filesystem: copy instead
                shutil.copyfile(image, staging)
            os.replace(staging, copy)
        return copy

    # Reading

    def readable(self, path: str, caller: Caller) -> bool | None:
        """Whether `caller` may read `path`; None when it is neither a shown image nor an upload (Gradio decides)."""
        target = real(path)
        self._prune()
        with self._lock:
            if self._on_a_shelf(target):  # this run's, or one a crashed run left (whose owners nobody knows)
                owner = self._images.get(target)
                return owner is not None and caller.owns(owner.visitor, owner.user)
            upload = self._uploads.get(target)
            if upload is None:
                return None
            return any(caller.owns(owner.visitor, owner.user) for owner in upload.owners)

    def owns_upload(self, path: str, caller: Caller) -> bool:
        """Whether `path` is a file `caller` uploaded (what a reference image in an event must be)."""
        with self._lock:
            upload = self._uploads.get(real(path))
            return upload is not None and any(caller.owns(owner.visitor, owner.user) for owner in upload.owners)

    # Uploads

    def reserve(self, caller: Caller, size: int) -> str | None:
        """Hold `size` bytes of upload for `caller`; None when they fit, else the one line saying why not."""
        self._prune()
        with self._lock:
            mine = self._kept(caller.visitor) + self._reserved.get(caller.visitor, 0)
            everyone = sum(upload.size for upload in self._uploads.values()) + sum(self._reserved.values())
            if mine + size > self.per_visitor:
                return (
                    f"this upload ({mib(size)}) would take this page's uploads past {mib(self.per_visitor)}; "
                    "remove some reference images, or close other pages of this browser"
                )
            if everyone + size > self.total:
                return f"the page holds {mib(self.total)} of uploads from everyone already; try again later"
            self._reserved[caller.visitor] = self._reserved.get(caller.visitor, 0) + size
            return None

    def release(self, caller: Caller, size: int) -> None:
        with self._lock:
            left = self._reserved.get(caller.visitor, 0) - size
            if left > 0:
                self._reserved[caller.visitor] = left
            else:
                self._reserved.pop(caller.visitor, None)

    def uploaded(self, caller: Caller, paths: list[str]) -> None:
        """Record the files an upload stored (the paths Gradio answered with) as `caller`'s."""
        owner = Owner(caller.visitor, caller.user)
        with self._lock:
            for path in paths:
                target = real(path)
                if not target.is_relative_to(self.upload_dir) or self._on_a_shelf(target):
                    continue
                with contextlib.suppress(OSError):
                    upload = self._uploads.setdefault(target, Upload(target.stat().st_size))
                    upload.owners.add(owner)

    def kept_bytes(self, visitor: str | None = None) -> int:
        """Bytes of uploads kept for one visitor, or for everyone."""
        self._prune(force=True)
        with self._lock:
            if visitor is None:
                return sum(upload.size for upload in self._uploads.values())
            return self._kept(visitor)

    # Pages opening and closing

    def page_opened(self, visitor: str, session: str) -> None:
        with self._lock:
            self._sessions.setdefault(visitor, set()).add(session)

    def page_closed(self, visitor: str, session: str) -> int:
        """Forget a closed page; when it was the visitor's last, delete its uploads. Returns how many went."""
        with self._lock:
            open_pages = self._sessions.get(visitor, set())
            open_pages.discard(session)
            if open_pages:
                return 0
            self._sessions.pop(visitor, None)
            gone = []
            for path, upload in list(self._uploads.items()):
                upload.owners = {owner for owner in upload.owners if owner.visitor != visitor}
                if not upload.owners:
                    gone.append(path)
                    del self._uploads[path]
        for path in gone:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # Gradio keeps each upload in a folder of its own
        return len(gone)

    def _on_a_shelf(self, path: Path) -> bool:
        if not path.is_relative_to(self.upload_dir):
            return False
        parts = path.relative_to(self.upload_dir).parts
        return bool(parts) and parts[0].startswith(SHELF_PREFIX)

    def _kept(self, visitor: str) -> int:
        return sum(
            upload.size for upload in self._uploads.values() if any(owner.visitor == visitor for owner in upload.owners)
        )

    def _prune(self, force: bool = False) -> None:
        """Forget files that are gone (Gradio deletes its cache's files an hour after they came)."""
        now = time.monotonic()
        if not force and now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        with self._lock:
            for images_or_uploads in (self._images, self._uploads):
                for path in [path for path in images_or_uploads if not path.exists()]:
                    del images_or_uploads[path]
