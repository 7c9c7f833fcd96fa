"""Inbound: HBONE on one 15008 listener per local enrolled pod (TLS from the first byte, that
pod's certificate), and plaintext captured on 15006. Decisions come from `routing.plan_inbound`."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from api.spiffe import SpiffeId
from common import tls
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import HboneConnection
from ztunnel.hbone.protocol import ErrorCodes
from ztunnel.identity import verify
from ztunnel.metrics import ConnLabels
from ztunnel.proxy import routing, sockets
from ztunnel.proxy.core import (
    CONNECT_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    ProxyCore,
    _Active,
    _HboneListener,
    _labels_for,
)
from ztunnel.proxy.relay import Tunnel
from ztunnel.proxy.splice import Held
from ztunnel.proxy.tlslistener import TlsListener
from ztunnel.state.workloads import Snapshot

log = logging.getLogger("ztunnel.proxy")


class InboundProxy(ProxyCore):
    async def sync_hbone_listeners(self) -> None:
        """One HBONE listener per local enrolled pod that has a certificate, bound (transparently)
        to `<pod IP>:15008`. The certificate is therefore chosen by original destination, as ztunnel
        does, with no SNI; TLS starts with the first byte; and a pod without a certificate has no
        listener, so its inbound HBONE is dropped by the datapath (counted as DROP_NO_LISTENER):
        fail closed. A listener belongs to one pod (its UID): an IP another pod now holds gets a new
        listener, and streams on connections accepted by the old one are refused (F-9,
        `routing.plan_inbound`). Rotation reloads the certificate in place. A new trust bundle (root
        rotation, RELIABILITY F-8) needs a new context, since a context's store only grows: a
        listener with it is bound beside the old one (SO_REUSEPORT, so no connection is refused),
        which then stops accepting; from then on a removed root's leaves are refused, and tickets of
        the old context (its keys) no longer resume. The same replaces a context whose ticket keys
        are `tls.TICKET_KEY_LIFETIME_S` old."""
        snap = self.snapshot()
        wanted: dict[str, tuple[SpiffeId, Any, str]] = {}
        if snap is not None:
            for ip, w in snap.by_ip.items():
                if w.node == snap.node and w.enrolled and (cert := self.certs.current(w.identity)):
                    wanted[ip] = (w.identity, cert, w.uid)
        for ip in [ip for ip in self.hbone if ip not in wanted]:
            self.hbone.pop(ip).server.close()
        now = asyncio.get_running_loop().time()
        for ip, (identity, cert, uid) in wanted.items():
            listener = self.hbone.get(ip)
            trust = hash(tuple(cert.bundle_pem))
            if (
                listener is not None
                and (listener.identity, listener.trust, listener.uid) == (identity, trust, uid)
                and now - listener.born < tls.TICKET_KEY_LIFETIME_S
            ):
                if listener.serial != cert.serial:
                    tls.load_identity(listener.ctx, cert.chain_pem, cert.key_pem)
                    listener.serial = cert.serial
                continue
            same_pod = listener is not None and listener.uid == uid
            if listener is not None and not same_pod:
                listener.server.close()  # another pod's IP now: never answer with its identity
            self.hbone[ip] = self._listen_hbone(ip, identity, cert, uid)
            if listener is not None and same_pod:
                listener.server.close()  # a new bundle or ticket keys: the old one goes after

    def _listen_hbone(self, ip: str, identity: SpiffeId, cert: Any, uid: str) -> _HboneListener:
        ctx = tls.server_context(
            cert.chain_pem,
            cert.key_pem,
            bundle_pem=cert.bundle_pem,
            require_client_cert=True,
            alpn=["h2"],
            tickets=True,  # pool dials resume (common.tls)
        )
        sock = sockets.listener(ip, self.settings.hbone_port, transparent=self.settings.transparent)
        server = TlsListener(
            sock,
            ctx,
            lambda: self._hbone_protocol(ip, uid),
            self,
            handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        )
        trust, born = hash(tuple(cert.bundle_pem)), asyncio.get_running_loop().time()
        return _HboneListener(server, ctx, identity, cert.serial, trust, born, uid)

    def _hbone_protocol(self, original_dst: str, uid: str) -> HboneConnection:
        def verify_client(transport: asyncio.Transport) -> SpiffeId:
            try:
                peer = self._verify(transport, verify.Purpose.CLIENT, None)
            except verify.PeerRejected as exc:
                self.metrics.reject("inbound", f"peer_{exc.reason.value}")
                log.warning(
                    "inbound peer %s rejected: %s", transport.get_extra_info("peername"), exc
                )
                raise
            verify.close_at_peer_expiry(transport)
            return peer

        conn = HboneConnection(
            client=False,
            limits=self.settings.limits,
            on_request=self._on_request,
            verify_peer=verify_client,
            on_fault=lambda reason: self.metrics.reject("inbound", reason),
        )
        conn.original_dst = original_dst  # type: ignore[attr-defined]
        conn.workload_uid = uid  # type: ignore[attr-defined]
        self.hbone_conns.add(conn)
        conn.closed.add_done_callback(lambda _: self.hbone_conns.discard(conn))
        if self.draining:
            conn.drain()  # accepted in the instant the listeners closed
        return conn

    def _on_request(self, conn: HboneConnection, request: p.ConnectRequest) -> None:
        if self.draining:
            # RFC 9113 §8.7: REFUSED_STREAM = not processed, safe to retry elsewhere; the client
            # retires this connection and opens one to the instance that replaces us.
            conn.reset(request.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if (reason := self._refusal()) is not None:
            self.metrics.reject("inbound", reason)
            conn.respond(request.stream_id, 503, end=True)
            return
        target_ip, target_port = p.parse_authority(request.authority)
        src_ip = conn.peer_addr[0]
        principal = conn.peer.principal if conn.peer else None
        judge = functools.partial(
            routing.plan_inbound,
            target_ip=target_ip,
            target_port=target_port,
            original_dst_ip=getattr(conn, "original_dst", target_ip),
            src_ip=src_ip,
            src_principal=principal,
            listener_uid=getattr(conn, "workload_uid", None),
        )
        plan = judge(self.snapshot())
        self._shadowed(plan, f"inbound {src_ip} ({principal}) -> {request.authority}")
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
        client = routing.original_source(plan, src_ip, principal, request.headers.get("forwarded"))
        src = snap.workload(client) if snap else None
        labels = _labels_for("destination", src, plan.dst, principal, mtls=True)

        self._spawn(
            self._inbound_dial(
                conn, request, tunnel, src_ip=src_ip, labels=labels, recheck=_rechecker(judge)
            )
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
            if tunnel.done:  # the stream was reset meanwhile: the tunnel reset the socket
                conn.reset(request.stream_id)  # a no-op for a stream the peer reset
                return
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

    def _shadowed(self, plan: routing.Inbound, what: str) -> None:
        """The dry-run policies' verdicts on a connection (HBONE or plaintext) are reported."""
        if plan.decision is not None and plan.decision.shadow:
            self.metrics.shadowed(plan.decision.shadow, what)

    def _on_inbound_plain(self, held: Held) -> None:
        if self._over_capacity(held, "inbound"):
            return
        assert held.transport is not None
        src = held.transport.get_extra_info("peername")
        dst = held.transport.get_extra_info("sockname")
        self._spawn(self._inbound_plain(held, src[0], (dst[0], dst[1])))

    async def _inbound_plain(self, held: Held, src_ip: str, dst: tuple[str, int]) -> None:
        snap = self.snapshot()
        judge = functools.partial(
            routing.plan_inbound,
            target_ip=dst[0],
            target_port=dst[1],
            original_dst_ip=dst[0],
            src_ip=src_ip,
            src_principal=None,
        )
        plan = judge(snap)
        self._shadowed(plan, f"inbound plaintext {src_ip} -> {dst[0]}:{dst[1]}")
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

        self._splice(
            held,
            sock,
            labels=labels,
            direction="inbound",
            detail=f"{src_ip}->{dst[0]}:{dst[1]}",
            recheck=_rechecker(judge),
        )


def _rechecker(
    judge: Callable[[Snapshot | None], routing.Inbound],
) -> Callable[[Snapshot | None], str | None]:
    """F-10: the same judgement on a newer snapshot; the reason if the connection must end."""

    def recheck(snapshot: Snapshot | None) -> str | None:
        verdict = judge(snapshot)
        return None if verdict.allowed else verdict.reason

    return recheck
