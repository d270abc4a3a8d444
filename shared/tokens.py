"""Named bearer tokens: who may call, the name each caller goes by in logs and metrics, and its own limits.

The tokens file holds one `name token` pair per line (blank lines and `#` comments are skipped), optionally
followed by that caller's limits, `max_in_flight=N` and `prompts_per_s=R`; a file with a single bare token
still works and names its caller "default". `reload()` (on SIGHUP) swaps the whole table at once, so a call
checks against either the old table or the new one, never a mix, and a file that fails to parse leaves the
old table in place. Only regular files up to `MAX_TOKENS_FILE_BYTES` are read (a FIFO or a device would block
or never end), and every check is linear in the file's size.

A presented token is looked up by its SHA-256 digest: the lookup's timing depends on the digest, which tells
an attacker nothing about any token's characters, and costs the same for 3 names or 30,000. Tokens are never
logged; only names are.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.caller_limits import CallerLimits, ConfigError

DEFAULT_NAME = "default"  # the caller of a single-token file, or of `ServerConfig.auth_token`
ANONYMOUS = "anonymous"  # every caller when no tokens are configured
UNKNOWN = "unknown"  # a refused call in logs and metrics
RESERVED_NAMES = frozenset({ANONYMOUS, UNKNOWN})
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # safe in a log line and a metrics label
MIN_TOKEN_CHARS = 16
MAX_TOKENS_FILE_BYTES = 4 * 1024 * 1024  # ~50,000 `name token` lines
LIMIT_FIELDS = ("max_in_flight", "prompts_per_s")

DENIED_MESSAGE = "missing or wrong bearer token; pass your token (FLUX2_ENCODER_TOKEN, --token-file or --token)"
HTTP_DENIED_MESSAGE = "missing or wrong bearer token; send `Authorization: Bearer <token>` with your team token"

# The name of the caller of the call being served, set by the auth check around the handler; None: refused.
current_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_caller", default=ANONYMOUS)


@dataclass(frozen=True)
class TokenEntry:
    """One caller's token and the limits the tokens file gives it (None fields: the server's defaults)."""

    token: bytes
    limits: CallerLimits = CallerLimits()


def bearer_token(authorization: str | bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value (scheme in any case), or None."""
    if authorization is None:
        return None
    value = authorization.encode() if isinstance(authorization, str) else bytes(authorization)
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


def parse_tokens(text: str, source: str) -> dict[str, TokenEntry]:
    """`{name: entry}` from a tokens file's text; raises ConfigError naming the line at fault."""
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    entries = [(number, line.split()) for number, line in lines if line and not line.startswith("#")]
    if len(entries) == 1 and len(entries[0][1]) == 1:  # the single-token file of earlier versions, as it was
        number, (token,) = entries[0]
        return {DEFAULT_NAME: TokenEntry(_header_safe(token, source, number))}
    tokens: dict[str, TokenEntry] = {}
    seen_tokens: set[bytes] = set()
    for number, fields in entries:
        if len(fields) < 2:
            raise ConfigError(f"{source} line {number}: expected `name token`, found {len(fields)} field.")
        name, token, *settings = fields
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"{source} line {number}: the name must be 1 to 64 letters, digits or `_.@-`, starting with a "
                "letter or digit."
            )
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"{source} line {number}: the name {name!r} is reserved (logs and metrics use it for callers "
                "without a valid token); choose another."
            )
        if name in tokens:
            raise ConfigError(f"{source} line {number}: the name {name!r} appears twice.")
        checked = _checked_token(token, source, number)
        if checked in seen_tokens:
            raise ConfigError(f"{source} line {number}: this token is already given to another name.")
        seen_tokens.add(checked)
        tokens[name] = TokenEntry(checked, _limits(settings, source, number))
    if not tokens:
        raise ConfigError(f"{source} holds no tokens; add a `name token` line.")
    return tokens


def _limits(settings: list[str], source: str, number: int) -> CallerLimits:
    """`max_in_flight=N prompts_per_s=R` after the token, each at most once."""
    values: dict[str, float] = {}
    for setting in settings:
        key, sign, text = setting.partition("=")
        if not sign or key not in LIMIT_FIELDS:
            raise ConfigError(
                f"{source} line {number}: expected `name token` then optional "
                f"{' '.join(f'{field}=N' for field in LIMIT_FIELDS)}, found {setting[:40]!r}."
            )
        if key in values:
            raise ConfigError(f"{source} line {number}: {key} is given twice.")
        try:
            value = float(text) if key == "prompts_per_s" else int(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{source} line {number}: {key} must be a positive number, not {text[:20]!r}.")
        values[key] = value
    in_flight = values.get("max_in_flight")
    return CallerLimits(None if in_flight is None else int(in_flight), values.get("prompts_per_s"))


def _checked_token(token: str, source: str, number: int) -> bytes:
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{source} line {number}: tokens must be at least {MIN_TOKEN_CHARS} characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
        )
    return _header_safe(token, source, number)


def _header_safe(token: str, source: str, number: int) -> bytes:
    """gRPC metadata and HTTP headers carry printable ASCII only: any other token could never be presented."""
    if not (token.isascii() and token.isprintable()):
        raise ConfigError(
            f"{source} line {number}: tokens must be printable ASCII (a header cannot carry other characters)."
        )
    return token.encode()


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenRegistry:
    """The tokens that may call, by name; `identify` answers which name a presented token belongs to."""

    def __init__(self, tokens: dict[str, TokenEntry], path: Path | None = None) -> None:
        self._swap(tokens)
        self.path = path

    def _swap(self, tokens: dict[str, TokenEntry]) -> None:
        # One assignment: a call on the loop sees the old table or the new one whole.
        self._table = (
            {_digest(entry.token): name for name, entry in tokens.items()},
            {name: entry.limits for name, entry in tokens.items()},
        )

    @classmethod
    def from_file(cls, path: Path) -> TokenRegistry:
        return cls(read_tokens_file(path), path)

    @classmethod
    def single(cls, token: str) -> TokenRegistry:
        return cls({DEFAULT_NAME: TokenEntry(token.strip().encode())})

    @property
    def names(self) -> list[str]:
        return sorted(self._table[1])

    def limits(self, name: str) -> CallerLimits:
        """The limits the tokens file gives `name` (all None where it sets none)."""
        return self._table[1].get(name, CallerLimits())

    def identify(self, authorization: str | bytes | None) -> str | None:
        """The caller's name for an `Authorization` value, or None."""
        presented = bearer_token(authorization)
        if presented is None:
            return None
        return self._table[0].get(_digest(presented))

    def reload(self) -> list[str]:
        """Re-read the tokens file and swap the table whole; returns the names now allowed.

        Raises ConfigError (and keeps the old table) when the file cannot be read or parsed. Blocking file I/O:
        the server calls it off the event loop.
        """
        if self.path is not None:
            self._swap(read_tokens_file(self.path))
        return self.names


def read_tokens_file(path: Path) -> dict[str, TokenEntry]:
    """Parse a tokens file that is a regular file of at most `MAX_TOKENS_FILE_BYTES`, or raise ConfigError."""
    flag = f"--tokens-file {path}"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it without reading.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ConfigError(f"cannot read {flag}: {error.strerror}.") from error
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ConfigError(f"cannot read {flag}: not a regular file; give a file of `name token` lines.")
        data = handle.read(MAX_TOKENS_FILE_BYTES + 1)
    if len(data) > MAX_TOKENS_FILE_BYTES:
        raise ConfigError(f"{flag} is over {MAX_TOKENS_FILE_BYTES // (1024 * 1024)} MiB; is it the right file?")
    try:
        text = data.decode("utf-8-sig")  # Windows editors start UTF-8 files with a byte order mark
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read {flag}: not UTF-8 text.") from error
    return parse_tokens(text, flag)
