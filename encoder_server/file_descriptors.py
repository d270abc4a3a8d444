"""File descriptors: raise the process's soft limit where the hard limit allows, and size connection caps to it.

Every connection costs a descriptor. With the usual soft limit of 1024, about a thousand idle connections
once left none for gRPC (new health checks timed out, `accept()` failed). At start-up the soft limit is raised
to what the caps need plus a reserve for everything else (model files, pipes, logs, threads); where the hard
limit does not allow that, the caps are lowered in proportion. The ready line says which.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from encoder_server.config import ConnectionLimits

RESERVED_DESCRIPTORS = 128  # measured: a loaded tiny CPU server with HTTP on holds 16
MIN_CONNECTIONS = 4


@dataclass(frozen=True)
class DescriptorBudget:
    soft_limit: int
    raised_from: int | None  # the soft limit found at start-up, when it was raised
    max_http_connections: int
    max_grpc_connections: int
    lowered: bool  # the caps are below what was configured, for want of descriptors

    def describe(self) -> str:
        """A phrase for the ready line."""
        raised = f" (raised from {self.raised_from})" if self.raised_from is not None else ""
        lowered = ", caps lowered to fit" if self.lowered else ""
        return f"{self.soft_limit} file descriptors{raised}{lowered}"


def plan_descriptors(limits: ConnectionLimits, serve_http: bool) -> DescriptorBudget:
    """Raise RLIMIT_NOFILE's soft limit as far as needed and allowed; the connection caps that then fit."""
    http = limits.max_http_connections if serve_http else 0
    wanted = RESERVED_DESCRIPTORS + limits.max_grpc_connections + http
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised_from = None
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                raised_from, soft = soft, target
            except (ValueError, OSError):
                pass  # the limit stays; the caps shrink below
    available = wanted - RESERVED_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft - RESERVED_DESCRIPTORS
    if available >= wanted - RESERVED_DESCRIPTORS:
        return DescriptorBudget(soft, raised_from, limits.max_http_connections, limits.max_grpc_connections, False)
    total = limits.max_grpc_connections + http
    usable = max(available, 2 * MIN_CONNECTIONS)
    grpc_connections = max(usable * limits.max_grpc_connections // total, MIN_CONNECTIONS)
    http_connections = max(usable * http // total, MIN_CONNECTIONS) if serve_http else limits.max_http_connections
    return DescriptorBudget(soft, raised_from, http_connections, grpc_connections, True)
