"""Prometheus metrics for one server, in its own registry so several servers can live in one process (tests).

Counters and histograms are updated where things happen (a call ends, a pass ends); gauges that describe
state (queue depth, cache size) are read at scrape time from the objects that own them, summed over the models
a server serves (each engine has its own queue and cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from encoder_server.serving.cache import CacheStats

PREFIX = "flux2_encoder"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _CacheCollector(Collector):
    """The embedding caches' counters and sizes, every model's together, read from the caches when scraped."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], CacheStats | None]] = []

    def collect(self) -> Iterable[Metric]:
        every = [stats for stats in (source() for source in self.sources) if stats is not None]
        if not every:
            return
        stats = CacheStats(*(sum(column) for column in zip(*(dataclasses.astuple(one) for one in every), strict=True)))
        for name, meaning, value in (
            ("hits", "prompts answered from the cache", stats.hits),
            ("misses", "prompts the cache did not hold", stats.misses),
            ("coalesced", "prompts that joined an identical computation already in flight", stats.coalesced),
            ("evictions", "entries dropped to stay within the byte budget", stats.evictions),
        ):
            yield CounterMetricFamily(f"{PREFIX}_cache_{name}", meaning, value=value)
        yield GaugeMetricFamily(f"{PREFIX}_cache_bytes", "bytes held by the cache", value=stats.bytes)
        yield GaugeMetricFamily(f"{PREFIX}_cache_capacity_bytes", "the cache's byte budget", value=stats.capacity)
        yield GaugeMetricFamily(f"{PREFIX}_cache_entries", "prompt embeddings held", value=stats.entries)


class ServerMetrics:
    """Everything the server reports: `exposition(detailed=True)` for operators, `exposition()` for anyone.

    The open exposition has no token names and nothing about the cache: hit counters rising by exactly one
    caller's probes, or entries growing, would tell that caller what others have encoded.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()  # everything
        self.public_registry = public = CollectorRegistry()  # what an unauthenticated scrape may see
        self.requests = Counter(
            f"{PREFIX}_requests", "calls by RPC, status and token name", ["rpc", "status", "token"], registry=registry
        )
        self.public_requests = Counter(
            f"{PREFIX}_requests", "calls by RPC and status", ["rpc", "status"], registry=public
        )
        self.prompts = Counter(f"{PREFIX}_prompts", "prompts received, by token name", ["token"], registry=registry)
        self.latency = Histogram(
            f"{PREFIX}_request_seconds", "end-to-end call time", ["rpc"], buckets=LATENCY_BUCKETS, registry=None
        )
        self.sent_bytes = Counter(f"{PREFIX}_sent_bytes", "reply bytes sent, by RPC", ["rpc"], registry=None)
        self.batch_prompts = Histogram(
            f"{PREFIX}_batch_prompts", "prompts per forward pass", buckets=BATCH_BUCKETS, registry=None
        )
        self.forward_seconds = Histogram(
            f"{PREFIX}_forward_seconds", "time of one forward pass", buckets=LATENCY_BUCKETS, registry=None
        )
        self.queued_prompts = Gauge(f"{PREFIX}_queued_prompts", "prompts waiting for a pass", registry=None)
        self.in_flight = Gauge(f"{PREFIX}_in_flight_requests", "calls being served", ["rpc"], registry=None)
        self._queues: list[Callable[[], int]] = []
        self.queued_prompts.set_function(lambda: sum(queued() for queued in self._queues))
        self._caches = _CacheCollector()
        registry.register(self._caches)
        for both in (
            self.latency,
            self.sent_bytes,
            self.batch_prompts,
            self.forward_seconds,
            self.queued_prompts,
            self.in_flight,
        ):
            registry.register(both)
            public.register(both)

    def watch(self, queued_prompts: Callable[[], int], cache_stats: Callable[[], CacheStats | None]) -> None:
        """Read one engine's queue depth and cache state at scrape time, added to every other engine's."""
        self._queues.append(queued_prompts)
        self._caches.sources.append(cache_stats)

    def call_finished(self, rpc: str, status: str, caller: str) -> None:
        self.requests.labels(rpc, status, caller).inc()
        self.public_requests.labels(rpc, status).inc()

    def batch_finished(self, prompts: int, seconds: float) -> None:
        self.batch_prompts.observe(prompts)
        self.forward_seconds.observe(seconds)

    def exposition(self, detailed: bool = True) -> bytes:
        """The Prometheus text format of every metric, or of those without caller or cache detail."""
        return generate_latest(self.registry if detailed else self.public_registry)
