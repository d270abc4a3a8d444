"""Named bearer tokens: who may call, and the name each caller goes by in logs and metrics.

The tokens file holds one `name token` pair per line (blank lines and `#` comments are skipped); a file
with a single bare token still works and names its caller "default". `reload()` (on SIGHUP) swaps the
whole table at once, so a call checks against either the old table or the new one, never a mix, and a
file that fails to parse leaves the old table in place. Tokens are compared in constant time and never
logged; only names are.
"""

from __future__ import annotations

import contextvars
import hmac
import re
from pathlib import Path

from encoder_server.config import ConfigError

DEFAULT_NAME = "default"  # the caller of a single-token file, or of `ServerConfig.auth_token`
ANONYMOUS = "anonymous"  # every caller when no tokens are configured
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # safe in a log line and a metrics label
MIN_TOKEN_CHARS = 16

DENIED_MESSAGE = "missing or wrong bearer token; pass your token (FLUX2_ENCODER_TOKEN, --token-file or --token)"
HTTP_DENIED_MESSAGE = "missing or wrong bearer token; send `Authorization: Bearer <token>` with your team token"

# The name of the caller of the call being served, set by the auth check around the handler; None: refused.
current_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_caller", default=ANONYMOUS)


def bearer_token(authorization: str | bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value (scheme in any case), or None."""
    if authorization is None:
        return None
    value = authorization.encode() if isinstance(authorization, str) else bytes(authorization)
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


def parse_tokens(text: str, source: str) -> dict[str, bytes]:
    """`{name: token}` from a tokens file's text; raises ConfigError naming the line at fault."""
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    entries = [(number, line.split()) for number, line in lines if line and not line.startswith("#")]
    if len(entries) == 1 and len(entries[0][1]) == 1:  # the single-token file of earlier versions, as it was
        number, (token,) = entries[0]
        return {DEFAULT_NAME: _header_safe(token, source, number)}
    tokens: dict[str, bytes] = {}
    for number, fields in entries:
        if len(fields) != 2:
            raise ConfigError(f"{source} line {number}: expected `name token`, found {len(fields)} fields.")
        name, token = fields
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"{source} line {number}: the name must be 1 to 64 letters, digits or `_.@-`, starting with a "
                "letter or digit."
            )
        if name in tokens:
            raise ConfigError(f"{source} line {number}: the name {name!r} appears twice.")
        checked = _checked_token(token, source, number)
        if checked in tokens.values():
            raise ConfigError(f"{source} line {number}: this token is already given to another name.")
        tokens[name] = checked
    if not tokens:
        raise ConfigError(f"{source} holds no tokens; add a `name token` line.")
    return tokens


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


class TokenRegistry:
    """The tokens that may call, by name; `identify` answers which name a presented token belongs to."""

    def __init__(self, tokens: dict[str, bytes], path: Path | None = None) -> None:
        self._tokens = dict(tokens)
        self.path = path

    @classmethod
    def from_file(cls, path: Path) -> TokenRegistry:
        return cls(_read(path), path)

    @classmethod
    def single(cls, token: str) -> TokenRegistry:
        return cls({DEFAULT_NAME: token.strip().encode()})

    @property
    def names(self) -> list[str]:
        return sorted(self._tokens)

    def identify(self, authorization: str | bytes | None) -> str | None:
        """The caller's name for an `Authorization` value, or None; checks every token so timing tells nothing."""
        presented = bearer_token(authorization)
        if presented is None:
            return None
        found = None
        for name, token in self._tokens.items():
            if hmac.compare_digest(presented, token):
                found = name
        return found

    def reload(self) -> list[str]:
        """Re-read the tokens file and swap the table whole; returns the names now allowed.

        Raises ConfigError (and keeps the old table) when the file cannot be read or parsed.
        """
        if self.path is None:
            return self.names
        self._tokens = _read(self.path)
        return self.names


def _read(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows editors start UTF-8 files with a byte order mark
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read --tokens-file {path}: {reason}.") from error
    return parse_tokens(text, f"--tokens-file {path}")
