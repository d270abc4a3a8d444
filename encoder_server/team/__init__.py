"""A service shared by a team: tokens, the call log, metrics."""
