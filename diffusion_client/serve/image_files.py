"""Images answered by `url`: written to `--out-dir` under names no one can guess, served only to the caller who
made them, and deleted after `--url-ttl`.

A name is 32 random bytes in URL-safe base64 plus the format's suffix; who owns it and when it expires are kept
in memory, so after a restart older files are served to nobody and swept once their age passes the TTL.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from diffusion_client.atomic_files import write_bytes

NAME = re.compile(r"^[A-Za-z0-9_-]{43}\.(png|jpg|webp)$")  # what `store` makes; nothing else is ever opened


@dataclass(frozen=True)
class StoredImage:
    owner: str
    expires: float  # time.time()


class ImageFiles:
    """The `url` images of one server, in `folder`."""

    def __init__(self, folder: Path, ttl_s: float) -> None:
        self.folder = folder
        self.ttl_s = ttl_s
        self._stored: dict[str, StoredImage] = {}
        self._lock = threading.Lock()

    def store(self, data: bytes, suffix: str, owner: str) -> str:
        """Write `data` (atomically) and return its name, for `owner` alone until the TTL passes."""
        name = f"{secrets.token_urlsafe(32)}{suffix}"
        write_bytes(self.folder / name, data)
        with self._lock:
            self._stored[name] = StoredImage(owner, time.time() + self.ttl_s)
        return name

    def path_for(self, name: str, caller: str) -> Path | None:
        """The file `name` if `caller` made it and it has not expired; None for anything else, alike."""
        if not NAME.match(name):
            return None
        with self._lock:
            stored = self._stored.get(name)
        if stored is None or stored.owner != caller or stored.expires <= time.time():
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def sweep(self) -> int:
        """Delete expired images, and ours left by an earlier run once older than the TTL; how many went."""
        now = time.time()
        with self._lock:
            expired = [name for name, stored in self._stored.items() if stored.expires <= now]
            for name in expired:
                del self._stored[name]
            known = set(self._stored)
        removed = 0
        try:
            candidates = list(self.folder.iterdir())
        except OSError:
            return 0
        for path in candidates:
            if not NAME.match(path.name) or path.name in known:
                continue
            try:
                if path.name in expired or path.stat().st_mtime + self.ttl_s <= now:
                    path.unlink()
                    removed += 1
            except OSError:
                continue  # gone already, or not ours to delete: the next sweep tries again
        return removed
