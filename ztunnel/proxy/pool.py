"""HBONE connection pool: a new TCP connection through the mesh costs a stream, not a handshake.

Key: (source IP, source identity, destination address, expected destination identity), as
ztunnel's WorkloadKey. Up to `max_streams` streams per connection (ztunnel: 100; the server
allows 200), then another connection is opened. One dial per key at a time: concurrent callers
wait for it instead of each paying a handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.spiffe import SpiffeId
from common import tls
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import HboneConnection
from ztunnel.identity import verify
from ztunnel.proxy.splice import Gate

log = logging.getLogger("ztunnel.pool")

MAX_STREAMS_PER_CONNECTION = 100  # ztunnel's DEFAULT_POOL_MAX_STREAMS_PER_CONNECTION


@dataclass(frozen=True)
class PoolKey:
    src_ip: str
    src: SpiffeId
    dst: tuple[str, int]
    dst_identity: SpiffeId


Dialer = Callable[[PoolKey], Awaitable[HboneConnection]]


class Pool:
    def __init__(self, dial: Dialer, max_streams: int = MAX_STREAMS_PER_CONNECTION) -> None:
        self.dial = dial
        self.max_streams = max_streams
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._dialing: dict[PoolKey, asyncio.Future[HboneConnection]] = {}
        self.dials = 0  # handshakes paid (for tests and metrics)

    def _ready(self, key: PoolKey) -> HboneConnection | None:
        live = [c for c in self._conns.get(key, []) if c.usable]
        self._conns[key] = live
        for conn in live:
            if conn.accepting_streams and len(conn.handlers) < self.max_streams:
                return conn
        return None

    async def get(self, key: PoolKey) -> HboneConnection:
        while True:
            if (conn := self._ready(key)) is not None:
                return conn
            if (pending := self._dialing.get(key)) is not None:
                await asyncio.shield(pending)
                continue
            future: asyncio.Future[HboneConnection] = asyncio.get_running_loop().create_future()
            self._dialing[key] = future
            try:
                conn = await self.dial(key)
                self.dials += 1
                self._conns.setdefault(key, []).append(conn)
                future.set_result(conn)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-dial on their own
                raise
            finally:
                del self._dialing[key]

    def connections(self) -> list[HboneConnection]:
        return [c for conns in self._conns.values() for c in conns]

    def drop_identity(self, identity: SpiffeId) -> None:
        """A source identity's certificate expired unreplaced: close its connections, streams and
        all (F-7: nothing keeps running on a certificate that is no longer valid)."""
        for key in [k for k in self._conns if k.src == identity]:
            for conn in self._conns.pop(key):
                conn.goaway(reason="certificate gone")

    def close_idle(self) -> int:
        """GOAWAY to every pooled connection without streams (memory pressure, L-6): the next
        stream dials again. Returns how many were closed."""
        closed = 0
        for key, conns in list(self._conns.items()):
            idle = [c for c in conns if not c.handlers]
            for conn in idle:
                conn.goaway(reason="memory pressure")
            self._conns[key] = [c for c in conns if c.handlers]
            closed += len(idle)
        return closed

    def drain(self) -> None:
        """No new streams on any pooled connection; each closes when its last stream ends."""
        for conn in self.connections():
            conn.close_when_idle()

    def close(self) -> None:
        for conn in self.connections():
            conn.goaway(reason="shutting down")
        self._conns.clear()


async def connect(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    *,
    trust_domain: str,
    peer: SpiffeId,
    limits: p.Limits,
    handshake_timeout_s: float,
) -> HboneConnection:
    """An HBONE client connection over a connected socket: TLS (no SNI), then the peer's
    SPIFFE identity checked before a single HTTP/2 byte is written (the handshake's bytes wait
    in a Gate meanwhile). A `tls.ResumingContext` resumes the last session it made with the
    same peer (identity and address), if it still may (common.tls)."""
    sessions = ctx.sessions if isinstance(ctx, tls.ResumingContext) else None
    host, port = sock.getpeername()[:2]
    session_key = f"{peer}@{host}:{port}"
    gate = Gate()
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: gate,
            sock=sock,
            ssl=ctx,
            server_hostname=session_key if sessions is not None else "",
            ssl_handshake_timeout=handshake_timeout_s,
        )
    except BaseException:
        if sessions is not None:
            sessions.forget(session_key)
        raise
    try:
        verify.verify_transport(transport, trust_domain, verify.Purpose.SERVER, peer)
    except verify.PeerRejected:
        if sessions is not None:
            sessions.forget(session_key)
        transport.abort()
        raise
    if sessions is not None:
        ssl_object = transport.get_extra_info("ssl_object")
        sessions.remember(session_key, ssl_object, verify.peer_not_after(ssl_object).timestamp())
    conn = HboneConnection(client=True, limits=limits)
    conn.peer = peer
    gate.open(transport, conn)
    return conn
