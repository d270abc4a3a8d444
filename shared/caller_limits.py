"""What one caller (one token name) may use at once, and the error for settings that cannot be: shared by
`flux2-encoder` and `flux2-serve`, which read the same tokens files."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_RATE = 1e9


class ConfigError(ValueError):
    """Conflicting or out-of-range settings; the message is one sentence saying which."""


@dataclass(frozen=True)
class CallerLimits:
    """What one caller (one token name) may use at once; None: no limit. Past either, RESOURCE_EXHAUSTED."""

    max_in_flight: int | None = None  # calls being served, every RPC and /predict together
    prompts_per_s: float | None = None  # a token bucket holding a second's worth, and at least one full request

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError(f"--caller-max-in-flight must be at least 1, not {self.max_in_flight}.")
        rate = self.prompts_per_s
        if rate is not None and not (math.isfinite(rate) and 0 < rate <= MAX_RATE):  # also refuses nan
            raise ConfigError(f"--caller-prompts-per-s must be a number above 0 and at most {MAX_RATE:g}, not {rate}.")

    def over(self, defaults: CallerLimits) -> CallerLimits:
        """These limits, with `defaults` where these set none."""
        return CallerLimits(
            self.max_in_flight if self.max_in_flight is not None else defaults.max_in_flight,
            self.prompts_per_s if self.prompts_per_s is not None else defaults.prompts_per_s,
        )
