"""The waypoint's request metrics, with Istio's names and labels: ztunnel's connection labels
plus `response_code`, reported as `reporter="waypoint"`. TCP through a waypoint uses ztunnel's
`istio_tcp_*` (`ztunnel.metrics.ProxyMetrics`) with the same reporter."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ztunnel.metrics import LABELS, ConnLabels

access_log = logging.getLogger("waypoint.access")

REQUEST_LABELS = (*LABELS, "response_code")
# Istio's default buckets for istio_request_duration_milliseconds and the byte histograms.
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
BYTES_BUCKETS = (1, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000)


MAX_CHILDREN = 10_000  # cached label sets; past that the cache starts over (bounded memory)


class RequestMetrics:
    """`access_log`: one line per request (off by default, as Istio's meshConfig.accessLogFile;
    denials and errors are logged regardless)."""

    def __init__(self, registry: CollectorRegistry, *, access_log: bool = False) -> None:
        self.access_log = access_log
        self._children: dict[tuple[ConnLabels, int], tuple[Any, Any, Any, Any]] = {}
        self.requests = Counter(
            "istio_requests", "HTTP requests", REQUEST_LABELS, registry=registry
        )
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration",
            REQUEST_LABELS,
            buckets=DURATION_BUCKETS_MS,
            registry=registry,
        )
        self.request_bytes = Histogram(
            "istio_request_bytes",
            "Request size (headers and body)",
            REQUEST_LABELS,
            buckets=BYTES_BUCKETS,
            registry=registry,
        )
        self.response_bytes = Histogram(
            "istio_response_bytes",
            "Response size (headers and body)",
            REQUEST_LABELS,
            buckets=BYTES_BUCKETS,
            registry=registry,
        )

    def observe(
        self,
        labels: ConnLabels,
        *,
        method: str,
        code: int,
        duration_s: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        key = (labels, code)
        if key not in self._children:  # prometheus-client's labels() costs µs per call
            values = {**labels.values(), "response_code": str(code)}
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            self._children[key] = (
                self.requests.labels(**values),
                self.duration.labels(**values),
                self.request_bytes.labels(**values),
                self.response_bytes.labels(**values),
            )
        requests, duration, request_size, response_size = self._children[key]
        requests.inc()
        duration.observe(duration_s * 1000)
        request_size.observe(request_bytes)
        response_size.observe(response_bytes)
        if not self.access_log:
            return
        access_log.info(
            "%s %d src=%s/%s(%s) dst=%s/%s(%s) request_bytes=%d response_bytes=%d duration_ms=%.1f",
            method or "-",
            code,
            labels.source_workload_namespace,
            labels.source_workload,
            labels.source_principal,
            labels.destination_workload_namespace,
            labels.destination_workload,
            labels.destination_service,
            request_bytes,
            response_bytes,
            duration_s * 1000,
        )
