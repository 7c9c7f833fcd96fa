"""The waypoint's asyncio edge: HBONE in on 15008 (mTLS, any mesh identity; TLS from the first
byte with the waypoint's own certificate), one task per tunnel that speaks HTTP/1.1, HTTP/2 or
TCP to the client, and HBONE out to the destination's ztunnel as the waypoint's identity (or
plain TCP to a destination outside the mesh), carrying the client in `Forwarded`.

Decisions are `state`'s (pure). Protocol: the Service port's when declared; otherwise sniffed
from the client's first bytes (the HTTP/2 preface, an HTTP/1.x request line, else TCP) with
`DETECT_TIMEOUT_S` for server-first protocols. Misdetection cannot weaken policy: TCP is judged
by the more restrictive L4 form of the same policies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from api import ports
from api.spiffe import SpiffeId
from common import heap, tls
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import HboneConnection
from ztunnel.identity import verify
from ztunnel.identity.manager import CertificateManager
from ztunnel.metrics import ConnLabels, ProxyMetrics
from ztunnel.proxy import overload, pool, sockets
from ztunnel.proxy.pool import Pool, PoolKey
from ztunnel.proxy.tlslistener import TlsListener
from ztunnel.state.policy import Connection, Decision
from ztunnel.waypoint import paths
from ztunnel.waypoint import state as decide
from ztunnel.waypoint.authz import Request
from ztunnel.waypoint.exchange import Exchange, Flow
from ztunnel.waypoint.http1 import Http1Session
from ztunnel.waypoint.http2 import Http2Session
from ztunnel.waypoint.lasting import Lasting, rejudge
from ztunnel.waypoint.metrics import RequestMetrics
from ztunnel.waypoint.pipe import HboneStream, Pipe, PipeReset, SocketPipe, relay
from ztunnel.waypoint.state import Target, WaypointState

log = logging.getLogger("waypoint")

HANDSHAKE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
RESPONSE_TIMEOUT_S = 10.0
DETECT_TIMEOUT_S = 1.0  # Istio's sidecar sniffing waited 100 ms-5 s over the years
MAX_TUNNELS = 16_000  # as ztunnel: below half of a 65536 fd limit (lower with fewer fds)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_REQUEST_LINE = re.compile(rb"^[A-Z]{3,16} \S")
_METHOD_SO_FAR = re.compile(rb"[A-Z]{1,16} ?")


@dataclass(frozen=True)
class WaypointSettings:
    listen_ip: str = "0.0.0.0"  # noqa: S104 - the waypoint pod's own netns
    hbone_port: int = ports.HBONE
    upstream_port: int = ports.HBONE  # a destination ztunnel's HBONE port
    limits: p.Limits = field(default_factory=p.Limits)
    max_tunnels: int = MAX_TUNNELS


def sniff(first: bytes) -> str:
    """http2 | http1 | tcp | "" (too few bytes to tell yet)."""
    if not first:
        return ""
    if H2_PREFACE.startswith(first[: len(H2_PREFACE)]):
        return "http2" if len(first) >= len(H2_PREFACE) else ""
    if _REQUEST_LINE.match(first):
        return "http1"
    return "" if _METHOD_SO_FAR.fullmatch(first) else "tcp"


class WaypointProxy:
    def __init__(
        self,
        settings: WaypointSettings,
        state: Callable[[], WaypointState | None],
        certs: CertificateManager,
        identity: SpiffeId,
        *,
        metrics: RequestMetrics,
        tcp_metrics: ProxyMetrics,
    ) -> None:
        self.settings, self.state, self.certs, self.identity = settings, state, certs, identity
        self.metrics, self.tcp_metrics = metrics, tcp_metrics
        self.pool = Pool(self._dial)
        self.lasting = Lasting(state)
        self.server: TlsListener | None = None
        self.port = 0
        self._ctx: ssl.SSLContext | None = None
        self._serial = 0
        self._trust = 0  # the listener's trust bundle (hash)
        self._born = 0.0  # loop time of its context (its ticket keys)
        self._client_ctx: tuple[tuple[int, int], ssl.SSLContext] | None = None
        self._conns: set[HboneConnection] = set()
        self._held = 0  # connections admitted by the listener and not yet over
        self._tasks: set[asyncio.Task[Any]] = set()
        self.memory = overload.Stage.NORMAL

    # --- listener --------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Listen once the certificate exists; reload it in place when it rotates. A new trust
        bundle (RELIABILITY F-8) gets a new context on a new listener beside the old one
        (reuse_port), as ztunnel's HBONE listeners do: a removed root's leaves are then refused.
        So do ticket keys `tls.TICKET_KEY_LIFETIME_S` old."""
        cert = self.certs.current(self.identity)
        if cert is None:
            return
        trust, now = hash(tuple(cert.bundle_pem)), asyncio.get_running_loop().time()
        if (
            self._ctx is None
            or trust != self._trust
            or now - self._born >= tls.TICKET_KEY_LIFETIME_S
        ):
            old = self.server
            self._ctx = tls.server_context(
                cert.chain_pem,
                cert.key_pem,
                bundle_pem=cert.bundle_pem,
                require_client_cert=True,
                alpn=["h2"],
                tickets=True,  # the ztunnels' pool dials resume (common.tls)
            )
            sock = sockets.listener(
                self.settings.listen_ip, self.port or self.settings.hbone_port, transparent=False
            )
            self.server = TlsListener(
                sock, self._ctx, self._accept, self, handshake_timeout_s=HANDSHAKE_TIMEOUT_S
            )
            if old is not None:
                old.close()
            self.port, self._trust = self.server.sockets[0].getsockname()[1], trust
            self._born = now
            log.info("waypoint %s listening on :%d", self.identity, self.port)
        elif cert.serial != self._serial:
            tls.load_identity(self._ctx, cert.chain_pem, cert.key_pem)
        self._serial = cert.serial

    def _accept(self) -> HboneConnection:
        conn = HboneConnection(
            client=False,
            limits=self.settings.limits,
            on_request=self._on_request,
            verify_peer=self._verify_client,
            on_fault=lambda reason: self.tcp_metrics.reject("waypoint", reason),
        )
        self._conns.add(conn)
        conn.closed.add_done_callback(lambda _: self._conns.discard(conn))
        return conn

    # The listener's gatekeeper (tlslistener.Gatekeeper): a connection past the cap is refused
    # before TLS. Connections (handshaking or open) count with tunnels.
    def admit(self) -> bool:
        if (reason := self._refusal(0)) is not None:
            self.tcp_metrics.reject("waypoint", reason)
            return False
        self._held += 1
        return True

    def release(self) -> None:
        self._held -= 1

    def handshake_failed(self, reason: str) -> None:
        self.tcp_metrics.reject("waypoint", reason)

    def _refusal(self, counted: int) -> str | None:
        """Why new work is refused now, if it is. `counted`: 1 when its own connection is in
        `_held` already (a tunnel request), 0 when it is not (a connection being accepted)."""
        if self.memory >= overload.Stage.REFUSE_NEW:
            return "memory_pressure"
        return (
            "overloaded"
            if self._held + len(self._tasks) - counted >= self.settings.max_tunnels
            else None
        )

    def on_memory(self, usage: overload.Usage | None) -> None:
        """A tick's memory sample (RELIABILITY L-6), as ztunnel's `ProxyCore.on_memory`: idle
        upstream connections close from 90 %, new connections and tunnels are refused from
        95 %. The heaviest tunnels are not reset here (ztunnel's third stage)."""
        stage = self.memory = overload.follow(
            self.memory, usage, self.tcp_metrics.memory_stage, log
        )
        if stage >= overload.Stage.CLOSE_IDLE:
            heap.give_back()  # what the last tick's shedding freed, for RSS to fall
            self.tcp_metrics.shed.labels(action="close_idle").inc(self.pool.close_idle())

    def _verify_client(self, transport: asyncio.Transport) -> SpiffeId:
        """Any mesh identity may reach a waypoint (policy decides); only mTLS peers exist here,
        so nothing is ever assumed of an unauthenticated tunnel (RELIABILITY W-5). The
        connection ends with the peer's certificate (F-7), as at ztunnel."""
        try:
            peer = verify.verify_transport(
                transport, self.identity.trust_domain, verify.Purpose.CLIENT, None
            )
        except verify.PeerRejected as exc:
            self.tcp_metrics.reject("waypoint", f"peer_{exc.reason.value}")
            log.warning("peer %s rejected: %s", transport.get_extra_info("peername"), exc)
            raise
        verify.close_at_peer_expiry(transport)
        return peer

    # --- tunnels in ------------------------------------------------------------------------------

    def _on_request(self, conn: HboneConnection, request: p.ConnectRequest) -> None:
        state = self.state()
        ip, port = p.parse_authority(request.authority)
        target = decide.resolve(state, ip, port) if state else "no_config"
        target = self._refusal(1) or target  # this connection is held already
        if isinstance(target, str):
            self.tcp_metrics.reject("waypoint", target)
            log.info("tunnel to %s refused: %s", request.authority, target)
            unavailable = target in ("no_config", "overloaded", "memory_pressure")
            conn.respond(request.stream_id, 503 if unavailable else 400, end=True)
            return
        stream = HboneStream()
        conn.register(request.stream_id, stream)
        stream.attach(conn, request.stream_id)
        conn.respond(request.stream_id, 200)
        principal = conn.peer.principal if conn.peer else None
        # The path normalization a connection starts with is its own to the end, as a
        # listener's settings are Envoy's connections'
        normalization = state.normalization if state else paths.DEFAULT
        trusted = state.trusted_proxies if state else 0
        flow = Flow(conn.peer_addr[0], principal, ip, target.target_port, normalization, trusted)
        task = asyncio.get_running_loop().create_task(self._serve(stream, flow, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: HboneStream, flow: Flow, target: Target) -> None:
        hooks = _Hooks(self, flow, target)
        kind, first = "tcp", b""
        if target.protocol != "tcp":
            try:
                kind, first = await self._detect(stream)
            except PipeReset:
                return
            if target.protocol in ("http", "http2") and kind == "tcp":
                kind = "http1"  # declared HTTP: whatever it is, it is judged as HTTP (→ 400)
        try:
            if kind == "http1":
                await Http1Session(stream, flow, hooks).run(first)
            elif kind == "http2":
                await Http2Session(stream, flow, hooks).run(first)
            else:
                await self._tcp(stream, flow, target, hooks, first)
        except Exception:
            log.exception("tunnel %s -> %s:%d failed", flow.src_ip, flow.dst_ip, flow.dst_port)
            stream.abort()

    async def _detect(self, stream: HboneStream) -> tuple[str, bytes]:
        first = b""
        try:
            async with asyncio.timeout(DETECT_TIMEOUT_S):
                while not (kind := sniff(first)):
                    data = await stream.read()
                    if not data:
                        return "tcp", first
                    first += data
        except TimeoutError:
            return "tcp", first
        return kind, first

    async def _tcp(
        self, stream: HboneStream, flow: Flow, target: Target, hooks: _Hooks, first: bytes
    ) -> None:
        connection = Connection(flow.src_ip, flow.src_principal, target.ip, target.target_port)
        closing: list[str] = []

        def abort(reason: str) -> None:
            closing.append(reason)
            stream.abort()  # the relay's read fails, and it aborts the upstream too

        judge = rejudge(target, lambda state, now: decide.authorize_tcp(state, now, connection))
        what = f"TCP {flow.src_ip}->{target.ip}:{target.port}"
        with self.lasting.hold(judge, abort, what) as verdict:
            if verdict.shadow:
                self.tcp_metrics.shadowed(verdict.shadow, what)
            if not verdict.allowed:
                self.tcp_metrics.reject("waypoint", verdict.reason)
                stream.abort()
                return
            await self._tcp_relay(stream, flow, target, hooks, first, closing=closing)

    async def _tcp_relay(
        self,
        stream: HboneStream,
        flow: Flow,
        target: Target,
        hooks: _Hooks,
        first: bytes,
        *,
        closing: list[str],
    ) -> None:
        try:
            up = await hooks.upstream()
        except (OSError, PipeReset, TimeoutError) as exc:
            self.tcp_metrics.reject("waypoint", "upstream_unreachable")
            log.info("upstream for %s:%d failed: %s", target.ip, target.port, exc)
            stream.abort()
            return
        labels = hooks.labels("tcp")
        self.tcp_metrics.open(labels, "waypoint")
        started, sent, error = asyncio.get_running_loop().time(), (len(first), 0), ""
        try:
            if first:
                await up.write(first)
            counts = await relay(stream, up)
            sent = (sent[0] + counts[0], counts[1])
        except (PipeReset, OSError) as exc:
            error = closing[0] if closing else str(exc)
        self.tcp_metrics.close(
            labels,
            "waypoint",
            request_bytes=sent[0],
            response_bytes=sent[1],
            duration_s=asyncio.get_running_loop().time() - started,
            error=error,
            detail=f"{flow.src_ip}->{target.ip}:{target.port}",
        )

    def recheck_policies(self) -> int:
        """F-10: TCP relays and WebSockets that policy now denies are closed (`lasting`)."""
        return self.lasting.recheck()

    # --- tunnels out -----------------------------------------------------------------------------

    async def open_upstream(self, flow: Flow, target: Target) -> tuple[Pipe, Any]:
        """A connection to the next hop, and the workload it reaches."""
        state = self.state()
        hop = decide.next_hop(state, target, random.getrandbits(32)) if state else None
        if hop is None:
            raise OSError("no healthy upstream")
        workload, port = hop
        if not workload.enrolled:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(workload.ip, port), CONNECT_TIMEOUT_S
            )
            return SocketPipe(reader, writer), workload
        await self.certs.get(self.identity)
        key = PoolKey(
            "", self.identity, (workload.ip, self.settings.upstream_port), workload.identity
        )
        for _ in range(3):  # a draining peer refuses streams: retried on a fresh connection
            conn = await self.pool.get(key)
            stream = HboneStream()
            headers = {"forwarded": f'for="{flow.src_ip}"'}
            stream.attach(
                conn, conn.open_stream(p.format_authority(workload.ip, port), headers, stream)
            )
            status = await asyncio.wait_for(stream.response, RESPONSE_TIMEOUT_S)
            if status == 200:
                return stream, workload
            conn.finished(stream.stream_id)
            if status != 0 or conn.usable:
                break
            conn.retired = True
        raise OSError(f"destination ztunnel answered {status}")

    async def _dial(self, key: PoolKey) -> HboneConnection:
        cert = await self.certs.get(key.src)
        # A new certificate or trust bundle: a new context, and none of the old one's sessions.
        version = (cert.serial, hash(tuple(cert.bundle_pem)))
        if self._client_ctx is None or self._client_ctx[0] != version:
            ctx = tls.client_context(
                cert.bundle_pem,
                chain_pem=cert.chain_pem,
                key_pem=cert.key_pem,
                alpn=["h2"],
                resume=True,
            )
            self._client_ctx = (version, ctx)
        sock = await sockets.dial(
            key.dst, src_ip=None, transparent=False, timeout_s=CONNECT_TIMEOUT_S
        )
        conn = await pool.connect(
            sock,
            self._client_ctx[1],
            trust_domain=key.src.trust_domain,
            peer=key.dst_identity,
            limits=self.settings.limits,
            handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        )
        conn.on_fault = lambda reason: self.tcp_metrics.reject("waypoint", reason)
        return conn

    # --- shutdown --------------------------------------------------------------------------------

    async def close(self, drain_s: float) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self._conns):
            conn.goaway(reason="shutting down")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_s)
        for task in list(self._tasks):
            task.cancel()
        self.pool.close()


class _Hooks:
    """What the HTTP sessions of one tunnel get from the proxy (`exchange.Hooks`)."""

    def __init__(self, proxy: WaypointProxy, flow: Flow, target: Target) -> None:
        self.proxy, self.flow, self.target = proxy, flow, target
        self.destination: Any = None  # the workload the last upstream connection reached
        self._labels: tuple[tuple[str, Any], ConnLabels] | None = None

    def authorize(self, request: Request) -> Decision:
        state = self.proxy.state()  # the newest policies judge every request
        if state is None:
            return Decision(False, "", "no_config")
        decision = decide.authorize_http(state, self.target, request)
        if decision.shadow:
            what = f"{request.method} {request.path} from {self.flow.src_ip}"
            self.proxy.tcp_metrics.shadowed(decision.shadow, what)
        return decision

    async def upstream(self) -> Pipe:
        pipe, self.destination = await self.proxy.open_upstream(self.flow, self.target)
        return pipe

    def hold(
        self, request: Request, abort: Callable[[str], None]
    ) -> AbstractContextManager[Decision]:
        judge = rejudge(self.target, lambda state, now: decide.authorize_http(state, now, request))
        what = f"WebSocket {self.flow.src_ip}->{self.target.ip}:{self.target.port}"
        return self.proxy.lasting.hold(judge, abort, what)

    def labels(self, protocol: str) -> ConnLabels:
        """Istio's labels for this tunnel's traffic (the same for each of its requests until
        the upstream changes: computed once per change)."""
        key = (protocol, self.destination)
        if self._labels is not None and self._labels[0] == key:
            return self._labels[1]
        self._labels = (key, self._compute_labels(protocol))
        return self._labels[1]

    def _compute_labels(self, protocol: str) -> ConnLabels:
        state = self.proxy.state()
        src = state.snapshot.workload(self.flow.src_ip) if state else None
        dst = self.destination or self.target.workload
        return ConnLabels(
            reporter="waypoint",
            source_workload=src.name if src else "unknown",
            source_workload_namespace=src.namespace if src else "unknown",
            source_principal=f"spiffe://{self.flow.src_principal}"
            if self.flow.src_principal
            else "unknown",
            destination_workload=dst.name if dst else "unknown",
            destination_workload_namespace=dst.namespace if dst else "unknown",
            destination_principal=str(dst.identity) if dst and dst.enrolled else "unknown",
            destination_service=self.target.service.host if self.target.service else "unknown",
            request_protocol=protocol,
            connection_security_policy="mutual_tls",
        )

    def record(self, exchange: Exchange) -> None:
        self.proxy.metrics.observe(
            self.labels(exchange.protocol),
            method=exchange.method,
            code=exchange.status,
            duration_s=time.monotonic() - exchange.started,
            request_bytes=exchange.request_bytes,
            response_bytes=exchange.response_bytes,
        )
