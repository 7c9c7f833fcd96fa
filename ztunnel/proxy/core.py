"""What every part of the proxy shares: settings, connection records, the tunnel/splice
bookkeeping that feeds metrics and the access log, and peer verification after TLS.
`ProxyCore` is the base of the outbound and inbound halves; `server.Proxy` joins them."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api import ports
from api.spiffe import SpiffeId
from common import heap
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import HboneConnection
from ztunnel.identity import verify
from ztunnel.identity.manager import CertificateManager
from ztunnel.metrics import ConnLabels, ProxyMetrics
from ztunnel.proxy import overload
from ztunnel.proxy.pool import Pool, PoolKey
from ztunnel.proxy.relay import Tunnel
from ztunnel.proxy.splice import Held, Splice
from ztunnel.proxy.tlslistener import TlsListener
from ztunnel.state.workloads import Snapshot, Workload

log = logging.getLogger("ztunnel.proxy")

HANDSHAKE_TIMEOUT_S = 5.0  # asyncio's default is 60 s (RELIABILITY C-1)
CONNECT_TIMEOUT_S = 5.0
RESPONSE_TIMEOUT_S = 10.0
# Global cap on connections: proxied ones (two fds each) and inbound HBONE ones, below half of a
# 65536 fd limit (Envoy's guidance); lower when the process has fewer fds (common.fdlimit).
MAX_CONNECTIONS = 16_000


@dataclass(frozen=True)
class ProxySettings:
    listen_ip: str = "0.0.0.0"  # noqa: S104 - inside ztunnel's own netns
    """Address the listeners bind (transparent listeners accept for any address)."""
    outbound_port: int = ports.ZTUNNEL_OUTBOUND
    inbound_plain_port: int = ports.ZTUNNEL_INBOUND_PLAINTEXT
    hbone_port: int = ports.HBONE
    socks_port: int = 0
    """SOCKS5 test entry (ztunnel: 15080), on 127.0.0.1 of ztunnel's netns; 0 = off."""
    transparent: bool = True
    """IP_TRANSPARENT on listeners and inbound dials (needs CAP_NET_ADMIN)."""
    original_source: bool = True
    """Dial pods (and HBONE peers) from the client's IP, as ztunnel does."""
    hbone_target_port: int = ports.HBONE
    limits: p.Limits = field(default_factory=p.Limits)
    max_connections: int = MAX_CONNECTIONS


@dataclass(frozen=True)
class _Accepted:
    """An accepted outbound connection and where its client wants to go."""

    held: Held
    src_ip: str
    dst: tuple[str, int]
    socks: bool  # answer in SOCKS5 (the 15080 entry) rather than with RST/close


@dataclass
class _HboneListener:
    """15008 of one local pod: TLS from the first byte with that pod's certificate."""

    server: TlsListener
    ctx: ssl.SSLContext
    identity: SpiffeId
    serial: int
    trust: int  # the trust bundle's hash
    born: float  # loop time of the context (its ticket keys): replaced when too old
    uid: str  # the pod it was made for: an IP reused by another pod gets a new listener


@dataclass
class _Active:
    """An open proxied connection, kept to re-check policy (F-10) and to drain."""

    direction: str
    labels: ConnLabels
    abort: Callable[[str], None]
    recheck: Callable[[Snapshot | None], str | None] | None = None
    cost: Callable[[], int] = lambda: 0  # bytes it buffers, for shedding the heaviest (L-6)


def _labels_for(
    reporter: str,
    src: Workload | None,
    dst: Workload | None,
    src_principal: str | None,
    mtls: bool,
    *,
    service: str = "unknown",
) -> ConnLabels:
    return ConnLabels(
        reporter=reporter,
        source_workload=src.name if src else "unknown",
        source_workload_namespace=src.namespace if src else "unknown",
        source_principal=(f"spiffe://{src_principal}" if src_principal else "unknown"),
        destination_workload=dst.name if dst else "unknown",
        destination_workload_namespace=dst.namespace if dst else "unknown",
        destination_principal=str(dst.identity) if dst and mtls else "unknown",
        connection_security_policy="mutual_tls" if mtls else "unknown",
        destination_service=service,
    )


class ProxyCore:
    def __init__(
        self,
        settings: ProxySettings,
        snapshot: Callable[[], Snapshot | None],
        certs: CertificateManager,
        metrics: ProxyMetrics,
    ) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.certs = certs
        self.metrics = metrics
        self.pool = Pool(self._dial_hbone)
        self.servers: list[asyncio.Server] = []
        self.active: dict[int, _Active] = {}
        self.ports: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ctx_cache: dict[tuple[str, int, int], ssl.SSLContext] = {}
        self.hbone: dict[str, _HboneListener] = {}
        self.hbone_in = 0  # inbound HBONE connections, handshaking or open
        self.hbone_conns: set[HboneConnection] = set()  # inbound ones, for the drain
        self.draining = False
        self.memory = overload.Stage.NORMAL
        certs.on_expired.append(self.pool.drop_identity)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refusal(self) -> str | None:
        """Why new work is refused now, if it is: memory pressure or the connection cap."""
        if self.memory >= overload.Stage.REFUSE_NEW:
            return "memory_pressure"
        used = len(self.active) + len(self._tasks) + self.hbone_in
        return "overloaded" if used >= self.settings.max_connections else None

    def _over_capacity(self, held: Held, direction: str) -> bool:
        if (reason := self._refusal()) is None:
            return False
        self.metrics.reject(direction, reason)
        held.refuse()
        return True

    # The HBONE listeners' gatekeeper (tlslistener.Gatekeeper): refused before TLS when full.
    def admit(self) -> bool:
        if (reason := self._refusal()) is not None:
            self.metrics.reject("inbound", reason)
            return False
        self.hbone_in += 1
        return True

    def release(self) -> None:
        self.hbone_in -= 1

    def handshake_failed(self, reason: str) -> None:
        self.metrics.reject("inbound", reason)

    def on_memory(self, usage: overload.Usage | None) -> None:
        """A housekeeping tick's memory sample (L-6): enter the stage it calls for and shed."""
        stage = self.memory = overload.follow(self.memory, usage, self.metrics.memory_stage, log)
        if usage is None or stage < overload.Stage.CLOSE_IDLE:
            return
        heap.give_back()  # what the last tick's shedding freed, for RSS to fall
        self.metrics.shed.labels(action="close_idle").inc(self.pool.close_idle())
        if stage < overload.Stage.RESET_HEAVIEST:
            return
        costs = ((key, record.cost()) for key, record in self.active.items())
        for key in overload.heaviest(costs, overload.excess(usage)):
            self.active[key].abort("memory pressure")
            self.metrics.shed.labels(action="reset").inc()

    def _track(self, key: int, record: _Active) -> None:
        self.active[key] = record
        self.metrics.open(record.labels, record.direction)

    def _track_tunnel(self, tunnel: Tunnel, record: _Active, detail: str) -> None:
        """Count the tunnel as open now and closed (with its bytes) when it ends. The request
        direction is client → server: into the stream outbound, out of it inbound."""
        key = id(tunnel)

        def closed(t: Tunnel) -> None:
            request, response = t.stats.to_stream, t.stats.from_stream
            if record.direction == "inbound":
                request, response = response, request
            self._closed(
                key,
                request_bytes=request,
                response_bytes=response,
                started=t.stats.started,
                error=t.stats.error,
                detail=detail,
            )

        tunnel.on_close = closed
        record.cost = tunnel.cost
        self._track(key, record)

    def _splice(
        self,
        held: Held,
        sock: Any,
        *,
        labels: ConnLabels,
        direction: str,
        detail: str,
        recheck: Callable[[Snapshot | None], str | None] | None = None,
    ) -> None:
        if held.lost or held.transport is None:
            sock.close()
            return
        splice = Splice()
        key_id = id(splice)
        splice.on_close = lambda s: self._closed(
            key_id,
            request_bytes=s.bytes[0],
            response_bytes=s.bytes[1],
            started=s.started,
            error=s.error,
            detail=detail,
        )
        self._track(key_id, _Active(direction, labels, splice.abort, recheck, splice.cost))
        held.handoff(splice.halves[0])
        self._spawn(self._connect_splice(splice, sock, held))

    async def _connect_splice(self, splice: Splice, sock: Any, held: Held) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: splice.halves[1], sock=sock)
        except OSError as exc:
            splice.abort(f"connect: {exc}")
            return
        if held.transport is not None and not held.transport.is_closing():
            held.transport.resume_reading()

    def _closed(
        self,
        key: int,
        *,
        request_bytes: int,
        response_bytes: int,
        started: float,
        error: str,
        detail: str,
    ) -> None:
        record = self.active.pop(key, None)
        if record is None:
            return
        duration = asyncio.get_running_loop().time() - started
        self.metrics.close(
            record.labels,
            record.direction,
            request_bytes=request_bytes,
            response_bytes=response_bytes,
            duration_s=max(duration, 0.0),
            error=error,
            detail=detail,
        )

    def _verify(
        self, transport: asyncio.BaseTransport, purpose: verify.Purpose, expected: SpiffeId | None
    ) -> SpiffeId:
        snap = self.snapshot()
        trust_domain = snap.trust_domain if snap else (expected.trust_domain if expected else "")
        return verify.verify_transport(transport, trust_domain, purpose, expected)

    async def _dial_hbone(self, key: PoolKey) -> HboneConnection:
        raise NotImplementedError  # the outbound half dials
