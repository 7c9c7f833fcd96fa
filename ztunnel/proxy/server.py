"""The L4 proxy: listeners, TLS and identity checks, and the hand-off of each connection to a
tunnel. Decisions come from `routing` (pure); this module does the I/O they call for.

Listeners (ztunnel's ports): 15001 outbound capture, 15006 inbound plaintext capture, 15008 HBONE
(mTLS), and 15080 SOCKS5 (test entry, off unless configured). Fail closed: without a snapshot, or
without the certificate of the identity concerned, nothing is forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from api.spiffe import SpiffeId
from common import tls
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import HboneConnection
from ztunnel.hbone.protocol import ErrorCodes
from ztunnel.identity import verify
from ztunnel.identity.manager import CertificateManager, CertificateUnavailable
from ztunnel.metrics import ConnLabels, ProxyMetrics
from ztunnel.proxy import routing, sockets, socks5
from ztunnel.proxy.pool import Pool, PoolKey
from ztunnel.proxy.relay import Tunnel
from ztunnel.proxy.splice import Gate, Held, Splice
from ztunnel.state.workloads import Snapshot, Workload

log = logging.getLogger("ztunnel.proxy")

HANDSHAKE_TIMEOUT_S = 5.0  # asyncio's default is 60 s (RELIABILITY C-1)
CONNECT_TIMEOUT_S = 5.0
RESPONSE_TIMEOUT_S = 10.0
# Global cap on proxied connections, below half of a 65536 fd limit (Envoy's guidance; each
# proxied connection holds two fds).
MAX_CONNECTIONS = 16_000


@dataclass(frozen=True)
class ProxySettings:
    listen_ip: str = "0.0.0.0"  # noqa: S104 - inside ztunnel's own netns
    """Address the listeners bind (transparent listeners accept for any address)."""
    outbound_port: int = 15001
    inbound_plain_port: int = 15006
    hbone_port: int = 15008
    socks_port: int = 0
    """SOCKS5 test entry (ztunnel: 15080); 0 = off."""
    transparent: bool = True
    """IP_TRANSPARENT on listeners and inbound dials (needs CAP_NET_ADMIN)."""
    original_source: bool = True
    """Dial pods (and HBONE peers) from the client's IP, as ztunnel does."""
    hbone_target_port: int = routing.HBONE_PORT
    limits: p.Limits = field(default_factory=p.Limits)
    max_connections: int = MAX_CONNECTIONS


@dataclass(frozen=True)
class _Accepted:
    """An accepted outbound connection and where its client wants to go."""

    held: Held
    src_ip: str
    dst: tuple[str, int]
    socks: bool  # answer in SOCKS5 (the 15080 entry) rather than with RST/close


def _close_at_peer_expiry(transport: asyncio.Transport) -> None:
    """RELIABILITY F-7: TLS never re-validates an established session, so a connection ends when
    its peer's certificate does (the fail-closed choice; the peer reconnects with its fresh one)."""
    ssl_object = transport.get_extra_info("ssl_object")
    not_after = x509.load_der_x509_certificate(
        ssl_object.getpeercert(binary_form=True)
    ).not_valid_after_utc
    delay = (not_after - datetime.now(UTC)).total_seconds()
    asyncio.get_running_loop().call_later(max(delay, 0.0), transport.abort)


@dataclass
class _HboneListener:
    """15008 of one local pod: TLS from the first byte with that pod's certificate."""

    server: asyncio.Server
    ctx: ssl.SSLContext
    identity: SpiffeId
    serial: int


@dataclass
class _Active:
    """An open proxied connection, kept to re-check policy (F-10) and to drain."""

    direction: str
    labels: ConnLabels
    abort: Callable[[str], None]
    recheck: Callable[[Snapshot | None], str | None] | None = None


def _labels_for(
    reporter: str, src: Workload | None, dst: Workload | None, src_principal: str | None, mtls: bool
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
    )


class Proxy:
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
        self._ctx_cache: dict[tuple[str, int], ssl.SSLContext] = {}
        self.hbone: dict[str, _HboneListener] = {}
        self.draining = False
        certs.on_expired.append(self.pool.drop_identity)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        specs = [
            ("outbound", s.outbound_port, self._on_outbound),
            ("inbound_plain", s.inbound_plain_port, self._on_inbound_plain),
        ]
        if s.socks_port:
            specs.append(("socks5", s.socks_port, self._on_socks))
        loop = asyncio.get_running_loop()
        for name, port, on_made in specs:
            sock = sockets.listener(s.listen_ip, port, transparent=s.transparent)
            server = await loop.create_server(lambda cb=on_made: Held(cb), sock=sock)  # type: ignore[misc]
            self.servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        self.ports["hbone"] = s.hbone_port
        await self.sync_hbone_listeners()

    def stop_listening(self) -> None:
        for server in self.servers:
            server.close()
        for listener in self.hbone.values():
            listener.server.close()
        self.hbone.clear()

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting (listeners closed, new streams refused), let open connections finish
        until the deadline, then cut them."""
        self.draining = True
        self.stop_listening()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        # Connections still being set up (accepted, tunnel not yet up) count as open too.
        while (self.active or self._tasks) and loop.time() < end:
            await asyncio.sleep(0.05)
        for record in list(self.active.values()):
            record.abort("drain deadline")
        self.pool.close()

    def recheck_policies(self) -> int:
        """F-10: after a config change, close open connections that policy now denies."""
        snap, closed = self.snapshot(), 0
        for record in list(self.active.values()):
            if record.recheck is not None and (reason := record.recheck(snap)) is not None:
                record.abort(f"policy changed: {reason}")
                closed += 1
        return closed

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _over_capacity(self, held: Held, direction: str) -> bool:
        if len(self.active) + len(self._tasks) < self.settings.max_connections:
            return False
        self.metrics.reject(direction, "overloaded")
        held.refuse()
        return True

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
        self._track(key, record)

    # --- outbound (15001, and 15080 SOCKS5) ------------------------------------------------------

    def _on_outbound(self, held: Held) -> None:
        if self._over_capacity(held, "outbound"):
            return
        assert held.transport is not None
        src = held.transport.get_extra_info("peername")
        dst = held.transport.get_extra_info("sockname")
        self._spawn(self._outbound(_Accepted(held, src[0], (dst[0], dst[1]), socks=False)))

    def _on_socks(self, held: Held) -> None:
        if self._over_capacity(held, "outbound"):
            return
        self._spawn(self._socks(held))

    async def _socks(self, held: Held) -> None:
        assert held.transport is not None
        parser, gate = socks5.Socks5Server(), Gate()
        held.transport.set_protocol(gate)
        held.transport.resume_reading()
        target = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                while target is None:
                    while not gate.buffer:
                        if gate.lost:
                            return
                        await asyncio.sleep(0.005)
                    data = bytes(gate.buffer)
                    gate.buffer.clear()
                    out, target = parser.feed(data)
                    held.transport.write(out)
        except (socks5.Socks5Error, TimeoutError) as exc:
            code = exc.code if isinstance(exc, socks5.Socks5Error) else socks5.GENERAL_FAILURE
            held.transport.write(socks5.reply(code))
            held.transport.close()
            self.metrics.reject("outbound", "socks_handshake")
            return
        held.transport.pause_reading()
        held.transport.set_protocol(held)
        src = held.transport.get_extra_info("peername")
        await self._outbound(_Accepted(held, src[0], target, socks=True))

    def _refuse(self, acc: _Accepted, reason: str, code: int = socks5.NOT_ALLOWED) -> None:
        self.metrics.reject("outbound", reason)
        log.info("outbound %s -> %s:%d refused: %s", acc.src_ip, *acc.dst, reason)
        if acc.socks and acc.held.transport is not None:
            acc.held.transport.write(socks5.reply(code))
            acc.held.transport.close()
        else:
            acc.held.refuse()

    async def _outbound(self, acc: _Accepted) -> None:
        plan = routing.plan_outbound(self.snapshot(), acc.src_ip, acc.dst[0])
        if plan.action == "reject":
            self._refuse(acc, plan.reason)
            return
        try:
            if plan.action == "passthrough":
                await self._passthrough(acc, plan)
            else:
                await self._via_hbone(acc, plan)
        except CertificateUnavailable as exc:
            self._refuse(acc, "no_certificate")
            log.warning("no certificate: %s", exc)
        except verify.PeerRejected as exc:
            self._refuse(acc, f"peer_{exc.reason.value}", socks5.REFUSED)
            log.warning("HBONE peer %s:%d rejected: %s", *acc.dst, exc)
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
            self._refuse(acc, "upstream_unreachable", socks5.HOST_UNREACHABLE)
            log.info("outbound %s -> %s:%d failed: %s", acc.src_ip, *acc.dst, exc)

    async def _passthrough(self, acc: _Accepted, plan: routing.Outbound) -> None:
        sock = await sockets.dial(
            acc.dst,
            src_ip=acc.src_ip if self.settings.original_source else None,
            transparent=self.settings.transparent,
            timeout_s=CONNECT_TIMEOUT_S,
        )
        labels = _labels_for("source", plan.src, plan.dst, None, mtls=False)
        if acc.socks and acc.held.transport is not None:
            acc.held.transport.write(socks5.reply(socks5.SUCCEEDED))
        self._splice(
            acc.held,
            sock,
            labels=labels,
            direction="outbound",
            detail=f"{acc.src_ip}->{acc.dst[0]}:{acc.dst[1]}",
        )

    async def _via_hbone(self, acc: _Accepted, plan: routing.Outbound) -> None:
        assert plan.src is not None
        assert plan.dst is not None
        await self.certs.get(plan.src.identity)  # fail closed: no cert, no tunnel
        target = (acc.dst[0], self.settings.hbone_target_port)
        key = PoolKey(acc.src_ip, plan.src.identity, target, plan.dst.identity)
        labels = _labels_for("source", plan.src, plan.dst, plan.src.identity.principal, True)
        authority = p.format_authority(*acc.dst)
        for _ in range(2):  # a draining peer refuses new streams: retry once, on a new connection
            conn = await self.pool.get(key)
            tunnel = Tunnel()
            stream_id = conn.open_stream(authority, {"forwarded": f'for="{acc.src_ip}"'}, tunnel)
            async with asyncio.timeout(RESPONSE_TIMEOUT_S):
                status = await tunnel.response
            if status == 0 and tunnel.reset_code == ErrorCodes.REFUSED_STREAM:
                conn.retired = True
                continue
            break
        if status != 200:
            conn.finished(stream_id)
            code = socks5.NOT_ALLOWED if status == 401 else socks5.HOST_UNREACHABLE
            self._refuse(acc, f"hbone_status_{status}", code)
            return
        held = acc.held
        if held.lost or held.transport is None:
            conn.reset(stream_id)
            return
        if acc.socks:
            held.transport.write(socks5.reply(socks5.SUCCEEDED))
        self._track_tunnel(tunnel, _Active("outbound", labels, tunnel.abort), authority)
        held.handoff(tunnel)
        tunnel.attach(conn, stream_id)
        held.transport.resume_reading()

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
        self._track(key_id, _Active(direction, labels, splice.abort, recheck))
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

    async def _dial_hbone(self, key: PoolKey) -> HboneConnection:
        cert = await self.certs.get(key.src)
        ctx = self._client_context(cert.identity)
        sock = await sockets.dial(
            key.dst,
            src_ip=key.src_ip if self.settings.original_source else None,
            transparent=self.settings.transparent,
            timeout_s=CONNECT_TIMEOUT_S,
        )
        loop = asyncio.get_running_loop()
        gate = Gate()
        transport, _ = await loop.create_connection(
            lambda: gate,
            sock=sock,
            ssl=ctx,
            server_hostname="",
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        )
        try:
            self._verify(transport, verify.Purpose.SERVER, key.dst_identity)
        except verify.PeerRejected:
            transport.abort()
            raise
        conn = HboneConnection(client=True, limits=self.settings.limits)
        conn.peer = key.dst_identity
        gate.open(transport, conn)
        return conn

    def _client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        """The HBONE client context of an identity, rebuilt when its certificate rotates."""
        cert = self.certs.current(identity)
        if cert is None:
            raise CertificateUnavailable(f"{identity}: no valid certificate")
        key = (str(identity), cert.serial)
        if key not in self._ctx_cache:
            self._ctx_cache = {k: v for k, v in self._ctx_cache.items() if k[0] != key[0]}
            self._ctx_cache[key] = tls.client_context(
                cert.bundle_pem, chain_pem=cert.chain_pem, key_pem=cert.key_pem, alpn=["h2"]
            )
        return self._ctx_cache[key]

    def _verify(
        self, transport: asyncio.BaseTransport, purpose: verify.Purpose, expected: SpiffeId | None
    ) -> SpiffeId:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            raise verify.PeerRejected(verify.Reason.MALFORMED, "ALPN must be h2")  # I-8
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            raise verify.PeerRejected(verify.Reason.NO_URI_SAN, "no peer certificate")
        snap = self.snapshot()
        trust_domain = snap.trust_domain if snap else (expected.trust_domain if expected else "")
        return verify.verify_peer(
            der,
            trust_domain=trust_domain,
            purpose=purpose,
            now=datetime.now(UTC),
            expected={expected} if expected else None,
        )

    # --- inbound HBONE (15008) -------------------------------------------------------------------

    async def sync_hbone_listeners(self) -> None:
        """One HBONE listener per local enrolled pod that has a certificate, bound (transparently)
        to `<pod IP>:15008`. The certificate is therefore chosen by original destination, as
        ztunnel does, with no SNI; TLS starts with the first byte; and a pod without a
        certificate has no listener, so its inbound HBONE is dropped by the datapath (counted as
        DROP_NO_LISTENER): fail closed. Rotation reloads the context in place."""
        snap = self.snapshot()
        wanted: dict[str, tuple[SpiffeId, Any]] = {}
        if snap is not None:
            for ip, w in snap.by_ip.items():
                if w.node == snap.node and w.enrolled and (cert := self.certs.current(w.identity)):
                    wanted[ip] = (w.identity, cert)
        for ip in [ip for ip in self.hbone if ip not in wanted]:
            self.hbone.pop(ip).server.close()
        for ip, (identity, cert) in wanted.items():
            listener = self.hbone.get(ip)
            if listener is not None and listener.identity == identity:
                if listener.serial != cert.serial:
                    tls.load_identity(listener.ctx, cert.chain_pem, cert.key_pem)
                    listener.serial = cert.serial
                continue
            if listener is not None:
                listener.server.close()
            self.hbone[ip] = await self._listen_hbone(ip, identity, cert)

    async def _listen_hbone(self, ip: str, identity: SpiffeId, cert: Any) -> _HboneListener:
        ctx = tls.server_context(
            cert.chain_pem,
            cert.key_pem,
            bundle_pem=cert.bundle_pem,
            require_client_cert=True,
            alpn=["h2"],
        )
        sock = sockets.listener(ip, self.settings.hbone_port, transparent=self.settings.transparent)
        server = await asyncio.get_running_loop().create_server(
            lambda: self._hbone_protocol(ip),
            sock=sock,
            ssl=ctx,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        )
        return _HboneListener(server, ctx, identity, cert.serial)

    def _hbone_protocol(self, original_dst: str) -> HboneConnection:
        def verify_client(transport: asyncio.Transport) -> SpiffeId:
            try:
                peer = self._verify(transport, verify.Purpose.CLIENT, None)
            except verify.PeerRejected as exc:
                self.metrics.reject("inbound", f"peer_{exc.reason.value}")
                log.warning(
                    "inbound peer %s rejected: %s", transport.get_extra_info("peername"), exc
                )
                raise
            _close_at_peer_expiry(transport)
            return peer

        conn = HboneConnection(
            client=False,
            limits=self.settings.limits,
            on_request=self._on_request,
            verify_peer=verify_client,
        )
        conn.original_dst = original_dst  # type: ignore[attr-defined]
        return conn

    def _on_request(self, conn: HboneConnection, request: p.ConnectRequest) -> None:
        if self.draining:
            # RFC 9113 §8.7: REFUSED_STREAM = not processed, safe to retry elsewhere; the client
            # retires this connection and opens one to the instance that replaces us.
            conn.reset(request.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        target_ip, target_port = p.parse_authority(request.authority)
        src_ip = conn.peer_addr[0]
        principal = conn.peer.principal if conn.peer else None
        plan = routing.plan_inbound(
            self.snapshot(),
            target_ip=target_ip,
            target_port=target_port,
            original_dst_ip=getattr(conn, "original_dst", target_ip),
            src_ip=src_ip,
            src_principal=principal,
        )
        if not plan.allowed:
            self.metrics.reject("inbound", plan.reason)
            log.info(
                "inbound %s (%s) -> %s refused: %s",
                src_ip,
                principal,
                request.authority,
                plan.reason,
            )
            conn.respond(request.stream_id, plan.status, end=True)
            return
        tunnel = Tunnel()
        conn.register(request.stream_id, tunnel)
        snap = self.snapshot()
        src = snap.workload(src_ip) if snap else None
        labels = _labels_for("destination", src, plan.dst, principal, mtls=True)

        def recheck(snapshot: Snapshot | None) -> str | None:
            again = routing.plan_inbound(
                snapshot,
                target_ip=target_ip,
                target_port=target_port,
                original_dst_ip=target_ip,
                src_ip=src_ip,
                src_principal=principal,
            )
            return None if again.allowed else again.reason

        self._spawn(
            self._inbound_dial(conn, request, tunnel, src_ip=src_ip, labels=labels, recheck=recheck)
        )

    async def _inbound_dial(
        self,
        conn: HboneConnection,
        request: p.ConnectRequest,
        tunnel: Tunnel,
        *,
        src_ip: str,
        labels: ConnLabels,
        recheck: Callable[[Snapshot | None], str | None],
    ) -> None:
        target = p.parse_authority(request.authority)
        try:
            sock = await sockets.dial(
                target,
                src_ip=src_ip if self.settings.original_source else None,
                transparent=self.settings.transparent,
                timeout_s=CONNECT_TIMEOUT_S,
            )
            await asyncio.get_running_loop().create_connection(lambda: tunnel, sock=sock)
        except (OSError, TimeoutError) as exc:
            self.metrics.reject("inbound", "upstream_unreachable")
            log.info("inbound to %s failed: %s", request.authority, exc)
            conn.finished(request.stream_id)
            conn.respond(request.stream_id, 503, end=True)
            return
        self._track_tunnel(
            tunnel, _Active("inbound", labels, tunnel.abort, recheck), request.authority
        )
        conn.respond(request.stream_id, 200)
        tunnel.attach(conn, request.stream_id)

    # --- inbound plaintext (15006) ---------------------------------------------------------------

    def _on_inbound_plain(self, held: Held) -> None:
        if self._over_capacity(held, "inbound"):
            return
        assert held.transport is not None
        src = held.transport.get_extra_info("peername")
        dst = held.transport.get_extra_info("sockname")
        self._spawn(self._inbound_plain(held, src[0], (dst[0], dst[1])))

    async def _inbound_plain(self, held: Held, src_ip: str, dst: tuple[str, int]) -> None:
        snap = self.snapshot()
        plan = routing.plan_inbound(
            snap,
            target_ip=dst[0],
            target_port=dst[1],
            original_dst_ip=dst[0],
            src_ip=src_ip,
            src_principal=None,
        )
        if not plan.allowed:
            self.metrics.reject("inbound", plan.reason)
            held.refuse()
            return
        try:
            sock = await sockets.dial(
                dst,
                src_ip=src_ip if self.settings.original_source else None,
                transparent=self.settings.transparent,
                timeout_s=CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError):
            self.metrics.reject("inbound", "upstream_unreachable")
            held.refuse()
            return
        src = snap.workload(src_ip) if snap else None
        labels = _labels_for("destination", src, plan.dst, None, mtls=False)

        def recheck(snapshot: Snapshot | None) -> str | None:
            again = routing.plan_inbound(
                snapshot,
                target_ip=dst[0],
                target_port=dst[1],
                original_dst_ip=dst[0],
                src_ip=src_ip,
                src_principal=None,
            )
            return None if again.allowed else again.reason

        self._splice(
            held,
            sock,
            labels=labels,
            direction="inbound",
            detail=f"{src_ip}->{dst[0]}:{dst[1]}",
            recheck=recheck,
        )
