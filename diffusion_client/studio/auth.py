"""Who may reach the page: `--auth-file` logins (one `user:password` per line, read from a file so they never
appear in `ps`), and the notes an operator gets about exposure."""

from __future__ import annotations

import stat
from pathlib import Path

from diffusion_client.errors import InputError

MAX_AUTH_FILE_BYTES = 64 * 1024
LOOPBACK = "127.0.0.1"  # where the page listens unless told otherwise: this machine only


def read_credentials(path: Path) -> list[tuple[str, str]]:
    """`(user, password)` pairs; blank lines and `#` comments skipped; anything else malformed is an error naming
    its line. A password is taken exactly as written (only the line end is dropped); a user name is trimmed, as
    the login form trims what is typed there."""
    try:
        if path.stat().st_size > MAX_AUTH_FILE_BYTES:
            raise InputError(
                f"auth file {path} is over {MAX_AUTH_FILE_BYTES // 1024} KiB; it holds user:password lines"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read auth file {path}: {error}") from error
    pairs: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")  # a file saved with Windows line ends
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        user = user.strip()
        if not colon or not user or not password:
            raise InputError(f"auth file {path}:{number}: each line is user:password (no line is echoed here)")
        if user in first_line:
            raise InputError(
                f"auth file {path}:{number}: this user is already on line {first_line[user]}; list each user once"
            )
        first_line[user] = number
        pairs.append((user, password))
    if not pairs:
        raise InputError(f"auth file {path} has no user:password lines")
    return pairs


def readable_by_others(path: Path) -> bool:
    """Whether the file's mode lets group or others read the passwords in it."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def exposure_notes(host: str, auth_file: Path | None) -> list[str]:
    """What the operator should know about who can reach the page: a wide listen without a login, a password
    file others can read."""
    notes = []
    if host != LOOPBACK and auth_file is None:
        notes.append(f"listening on {host} without --auth-file: anyone who reaches this port can generate")
    if auth_file is not None and readable_by_others(auth_file):
        notes.append(f"{auth_file} can be read by other users of this machine; chmod 600 it")
    return notes
