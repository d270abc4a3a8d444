"""Prometheus metrics of one `flux2-serve`, in its own registries: requests, queue length, images and seconds per
image, by caller name. Prompt text never appears; caller names only behind `--metrics-token-file` (an open
scrape shows totals), since who calls how often is the callers' business."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "flux2_serve"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class _Metrics:
    """One registry's metrics; `by_caller` adds the `caller` label to each."""

    def __init__(self, queue_length: Callable[[], int], by_caller: bool) -> None:
        self.registry = CollectorRegistry()
        self.by_caller = by_caller
        caller = ["caller"] if by_caller else []
        self.requests = Counter(
            f"{PREFIX}_requests",
            "requests by endpoint and HTTP status",
            ["endpoint", "status", *caller],
            registry=self.registry,
        )
        self.images = Counter(f"{PREFIX}_images", "images generated and answered", caller, registry=self.registry)
        self.seconds = Histogram(
            f"{PREFIX}_image_seconds",
            "seconds from a job's start on the GPU to its marked image",
            caller,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        queued = Gauge(f"{PREFIX}_queue_length", "requests waiting for the GPU", registry=self.registry)
        queued.set_function(lambda: float(queue_length()))

    def labels(self, caller: str) -> dict[str, str]:
        return {"caller": caller} if self.by_caller else {}


class ServeMetrics:
    """`exposition(detailed=True)` for the operator; `exposition()` for an open scrape."""

    def __init__(self, queue_length: Callable[[], int]) -> None:
        self._detailed = _Metrics(queue_length, by_caller=True)
        self._public = _Metrics(queue_length, by_caller=False)

    def request(self, endpoint: str, status: int, caller: str) -> None:
        for metrics in (self._detailed, self._public):
            metrics.requests.labels(endpoint=endpoint, status=str(status), **metrics.labels(caller)).inc()

    def image(self, caller: str, seconds: float) -> None:
        for metrics in (self._detailed, self._public):
            labels = metrics.labels(caller)
            (metrics.images.labels(**labels) if labels else metrics.images).inc()
            (metrics.seconds.labels(**labels) if labels else metrics.seconds).observe(seconds)

    def exposition(self, detailed: bool = False) -> bytes:
        return generate_latest((self._detailed if detailed else self._public).registry)
