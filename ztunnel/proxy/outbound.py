"""Outbound: connections a local pod opens, captured on 15001 (or asked for on the 15080 SOCKS5
test entry), carried over HBONE as the pod's identity, or passed through when the destination is
outside the mesh. Decisions come from `routing.plan_outbound`."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl

from api.spiffe import SpiffeId
from common import tls
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import HboneConnection
from ztunnel.hbone.protocol import ErrorCodes
from ztunnel.identity import verify
from ztunnel.identity.manager import CertificateUnavailable
from ztunnel.proxy import pool, routing, sockets, socks5
from ztunnel.proxy.core import (
    CONNECT_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    RESPONSE_TIMEOUT_S,
    ProxyCore,
    _Accepted,
    _Active,
    _labels_for,
)
from ztunnel.proxy.pool import PoolKey
from ztunnel.proxy.relay import Tunnel
from ztunnel.proxy.splice import Gate, Held

log = logging.getLogger("ztunnel.proxy")

REFUSED_RETRIES = 2


class OutboundProxy(ProxyCore):
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
                    await gate.arrival()
                    if gate.lost:
                        return
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
        choice = random.getrandbits(32)
        plan = routing.plan_outbound(self.snapshot(), acc.src_ip, *acc.dst, choice)
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
        assert plan.target is not None
        sock = await sockets.dial(
            plan.target,
            src_ip=acc.src_ip if self.settings.original_source else None,
            transparent=self.settings.transparent,
            timeout_s=CONNECT_TIMEOUT_S,
        )
        labels = _labels_for("source", plan.src, plan.dst, None, False, service=_service(plan))
        if acc.socks and acc.held.transport is not None:
            acc.held.transport.write(socks5.reply(socks5.SUCCEEDED))
        self._splice(
            acc.held,
            sock,
            labels=labels,
            direction="outbound",
            detail=f"{acc.src_ip}->{plan.target[0]}:{plan.target[1]}",
        )

    async def _via_hbone(self, acc: _Accepted, plan: routing.Outbound) -> None:
        assert plan.src is not None
        assert plan.target is not None
        await self.certs.get(plan.src.identity)  # fail closed: no cert, no tunnel
        # Through a waypoint: to one of its pods, expecting its identity; else to the endpoint.
        peer = plan.waypoint.identity if plan.waypoint else plan.dst.identity if plan.dst else None
        assert peer is not None
        target = (plan.hop or plan.target[0], self.settings.hbone_target_port)
        key = PoolKey(acc.src_ip, plan.src.identity, target, peer)
        principal = plan.src.identity.principal
        labels = _labels_for("source", plan.src, plan.dst, principal, True, service=_service(plan))
        authority = p.format_authority(*plan.target)
        # Retried on another connection, when the request was certainly not served: the peer
        # refused the stream (REFUSED_STREAM while draining, RFC 9113 §8.7), or the connection
        # ended before any answer (a peer that finished draining and closed). Nothing of the
        # client's was sent yet: its bytes wait for the 200. Two retries, not one: a connection
        # dialed in the instant the peer stopped listening may still have been accepted by it.
        for _ in range(1 + REFUSED_RETRIES):
            conn = await self.pool.get(key)
            tunnel = Tunnel()
            stream_id = conn.open_stream(authority, {"forwarded": f'for="{acc.src_ip}"'}, tunnel)
            async with asyncio.timeout(RESPONSE_TIMEOUT_S):
                status = await tunnel.response
            unanswered = status == 0 and (
                tunnel.reset_code == ErrorCodes.REFUSED_STREAM or not conn.usable
            )
            if unanswered:
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

    async def _dial_hbone(self, key: PoolKey) -> HboneConnection:
        cert = await self.certs.get(key.src)
        ctx = self._client_context(cert.identity)
        sock = await sockets.dial(
            key.dst,
            src_ip=key.src_ip if self.settings.original_source else None,
            transparent=self.settings.transparent,
            timeout_s=CONNECT_TIMEOUT_S,
        )
        snap = self.snapshot()
        conn = await pool.connect(
            sock,
            ctx,
            trust_domain=snap.trust_domain if snap else key.dst_identity.trust_domain,
            peer=key.dst_identity,
            limits=self.settings.limits,
            handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        )
        assert conn.transport is not None
        conn.on_fault = lambda reason: self.metrics.reject("outbound", reason)
        self.metrics.dialed(conn.transport.get_extra_info("ssl_object").session_reused)
        return conn

    def _client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        """The HBONE client context of an identity, rebuilt when its certificate or trust
        bundle changes; it resumes the sessions of its pool dials (common.tls)."""
        cert = self.certs.current(identity)
        if cert is None:
            raise CertificateUnavailable(f"{identity}: no valid certificate")
        # A new certificate or trust bundle: a new context, and none of the old one's sessions.
        key = (str(identity), cert.serial, hash(tuple(cert.bundle_pem)))
        if key not in self._ctx_cache:
            self._ctx_cache = {k: v for k, v in self._ctx_cache.items() if k[0] != key[0]}
            self._ctx_cache[key] = tls.client_context(
                cert.bundle_pem,
                chain_pem=cert.chain_pem,
                key_pem=cert.key_pem,
                alpn=["h2"],
                resume=True,
            )
        return self._ctx_cache[key]


def _service(plan: routing.Outbound) -> str:
    return plan.service.host if plan.service else "unknown"
