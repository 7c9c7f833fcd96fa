"""ztunnel's metrics, with Istio's names and labels (so existing dashboards work), plus
rejections by reason, and the access log: one line per closed connection."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ztunnel.state.policy import Shadow

access_log = logging.getLogger("ztunnel.access")

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


@dataclass(frozen=True)
class ConnLabels:
    reporter: str  # "source" (outbound) or "destination" (inbound)
    source_workload: str = "unknown"
    source_workload_namespace: str = "unknown"
    source_principal: str = "unknown"
    destination_workload: str = "unknown"
    destination_workload_namespace: str = "unknown"
    destination_principal: str = "unknown"
    destination_service: str = "unknown"
    request_protocol: str = "tcp"
    response_flags: str = "-"
    connection_security_policy: str = "unknown"  # "mutual_tls" when over HBONE

    def values(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in LABELS}


MAX_CHILDREN = 10_000  # cached label sets (bounded: the cache starts over past it)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # prometheus-client's labels() validates and hashes every value on each call: a few µs
        # per metric, per connection. The children of a label set are looked up once.
        self._children: dict[ConnLabels, tuple[Any, Any, Any, Any]] = {}
        self.opened = Counter(
            "istio_tcp_connections_opened", "TCP connections opened", LABELS, registry=registry
        )
        self.closed = Counter(
            "istio_tcp_connections_closed", "TCP connections closed", LABELS, registry=registry
        )
        self.received = Counter(
            "istio_tcp_received_bytes",
            "Bytes received during request (client to server)",
            LABELS,
            registry=registry,
        )
        self.sent = Counter(
            "istio_tcp_sent_bytes",
            "Bytes sent during response (server to client)",
            LABELS,
            registry=registry,
        )
        self.rejected = Counter(
            "ambientmesh_ztunnel_rejections",
            "Connections or streams refused, by reason",
            ["direction", "reason"],
            registry=registry,
        )
        # Envoy's RBAC shadow stats under Istio's dry-run prefixes (`istio_dry_run_allow_`,
        # `istio_dry_run_deny_`): what the dry-run policies would have decided.
        self.dry_run = {
            (engine, verdict): Counter(
                f"istio_dry_run_{engine}_shadow_{verdict}",
                f"Connections or requests the dry-run {engine.upper()} policies would have "
                f"{verdict}",
                registry=registry,
            )
            for engine in ("allow", "deny")
            for verdict in ("allowed", "denied")
        }
        self.dials = Counter(
            "ambientmesh_ztunnel_hbone_dials",
            "HBONE connections opened by the pool, by whether TLS resumed a session",
            ["resumed"],
            registry=registry,
        )
        self.active = Gauge(
            "ambientmesh_ztunnel_active_connections",
            "Proxied connections open now",
            ["direction"],
            registry=registry,
        )
        self.memory_stage = Gauge(
            "ambientmesh_ztunnel_memory_stage",
            "Memory overload stage: 0 normal, 1 idle connections closed, 2 new work refused, "
            "3 heaviest connections reset",
            registry=registry,
        )
        self.shed = Counter(
            "ambientmesh_ztunnel_memory_shed",
            "What memory pressure made ztunnel do: idle HBONE connections closed, resets",
            ["action"],
            registry=registry,
        )

    def _of(self, labels: ConnLabels) -> tuple[Any, Any, Any, Any]:
        children = self._children.get(labels)
        if children is None:
            values = labels.values()
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            children = self._children[labels] = (
                self.opened.labels(**values),
                self.closed.labels(**values),
                self.received.labels(**values),
                self.sent.labels(**values),
            )
        return children

    def open(self, labels: ConnLabels, direction: str) -> None:
        self._of(labels)[0].inc()
        self.active.labels(direction=direction).inc()  # 2-3 directions: cheap enough

    def close(
        self,
        labels: ConnLabels,
        direction: str,
        *,
        request_bytes: int,
        response_bytes: int,
        duration_s: float,
        error: str,
        detail: str,
    ) -> None:
        _, closed, received, sent = self._of(labels)
        closed.inc()
        received.inc(request_bytes)
        sent.inc(response_bytes)
        self.active.labels(direction=direction).dec()
        access_log.info(
            "%s src=%s/%s(%s) dst=%s/%s(%s) src_identity=%s dst_identity=%s "
            "request_bytes=%d response_bytes=%d duration_ms=%.1f error=%s",
            direction,
            labels.source_workload_namespace,
            labels.source_workload,
            detail,
            labels.destination_workload_namespace,
            labels.destination_workload,
            labels.destination_service,
            labels.source_principal,
            labels.destination_principal,
            request_bytes,
            response_bytes,
            duration_s * 1000,
            error or "-",
        )

    def reject(self, direction: str, reason: str) -> None:
        self.rejected.labels(direction=direction, reason=reason).inc()

    def shadowed(self, shadows: Iterable[Shadow], what: str) -> None:
        """Count and log the dry-run verdicts of one connection or request (`what`)."""
        for s in shadows:
            verdict = "allowed" if s.allowed else "denied"
            self.dry_run[(s.engine, verdict)].inc()
            access_log.info(
                "dry-run %s: %s shadow_effective_policy_id=%s shadow_engine_result=%s",
                s.engine,
                what,
                s.policy or "-",
                verdict,
            )

    def dialed(self, resumed: bool) -> None:
        self.dials.labels(resumed="true" if resumed else "false").inc()
