"""Who is calling: bearer tokens from a tokens file in `flux2-encoder`'s format (`name token [max_in_flight=N]
[prompts_per_s=R]` lines, reloaded on SIGHUP), and each caller's limits.

Without a tokens file every caller is `anonymous`. A token is only ever read from the `Authorization` header:
one in the URL's query would end up in proxies' and browsers' logs, so a query string is refused outright.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from diffusion_client.serve.api_errors import bad_request, queue_full, unauthorized
from shared.caller_limits import CallerLimits
from shared.quotas import CallerQuotas, OverQuotaError
from shared.tokens import ANONYMOUS, TokenRegistry

DENIED = (
    "missing or wrong bearer token: send `Authorization: Bearer <token>` with a token from the server's tokens file"
)


class Callers:
    """Names callers from their `Authorization` header and holds their per-caller limits."""

    def __init__(self, tokens_file: Path | None, defaults: CallerLimits | None = None) -> None:
        self.registry = TokenRegistry.from_file(tokens_file) if tokens_file is not None else None
        self._defaults = defaults or CallerLimits()
        self._quotas = CallerQuotas(self._limits_of, max_request_prompts=1)

    @property
    def open(self) -> bool:
        """Whether anyone may call (no tokens file)."""
        return self.registry is None

    def _limits_of(self, name: str) -> CallerLimits:
        own = self.registry.limits(name) if self.registry is not None else CallerLimits()
        return CallerLimits(
            own.max_in_flight if own.max_in_flight is not None else self._defaults.max_in_flight,
            own.prompts_per_s if own.prompts_per_s is not None else self._defaults.prompts_per_s,
        )

    def identify(self, authorization: str | None, query: str = "") -> str:
        """The caller's name, or 401; a query string (where a token would leak into logs) is refused first."""
        if query:
            raise bad_request(
                "this API takes no URL query parameters; send the token as `Authorization: Bearer <token>`",
                code="query_not_allowed",
            )
        if self.registry is None:
            return ANONYMOUS
        name = self.registry.identify(authorization)
        if name is None:
            raise unauthorized(DENIED)
        return name

    @contextlib.contextmanager
    def admitted(self, caller: str) -> Iterator[None]:
        """Hold one of the caller's in-flight places while its request lives, its first image charged; 429 past
        its limits (checked before its body is read)."""
        try:
            self._quotas.charge(caller, 1)
            with self._quotas.admit(caller):
                yield
        except OverQuotaError as error:
            raise queue_full(str(error)) from None

    def charge(self, caller: str, images: int) -> None:
        """Charge more images of an admitted request to the caller's rate."""
        if images > 0:
            try:
                self._quotas.charge(caller, images)
            except OverQuotaError as error:
                raise queue_full(str(error)) from None

    def reload(self) -> list[str]:
        """Re-read the tokens file (SIGHUP); the old table stays if the new one does not parse."""
        return self.registry.reload() if self.registry is not None else []
