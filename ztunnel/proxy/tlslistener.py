"""A TLS listener that refuses connections past a cap before any TLS work (RELIABILITY L-1).

`loop.create_server(ssl=...)` starts a handshake for every socket it accepts: nothing can refuse
one before the handshake's CPU (an ECDSA signature) and memory are spent, so a flood of
connections to 15008 is limited by nothing but the handshake timeout. Here the accepting is
ours: a connection the gatekeeper does not admit is reset at once (SO_LINGER 0); the others go
to `connect_accepted_socket` with the handshake timeout, and keep their slot until their
protocol's `closed` is done: lost, or a handshake that failed. Running out of fds (EMFILE)
pauses accepting briefly instead of spinning on a listening socket that stays readable, as Go's
net/http does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from ztunnel.proxy import sockets

log = logging.getLogger("ztunnel.proxy")

# Accepts per readiness event: enough to drain a burst, few enough that a flood on one
# listener does not starve the loop's other work (libuv accepts until EAGAIN).
ACCEPT_BATCH = 32
# After EMFILE/ENFILE (Go's net/http backs off 5 ms doubling to 1 s; one fixed pause suffices).
FD_PAUSE_S = 0.1
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Gatekeeper(Protocol):
    """Who decides: takes a slot for a new connection (False: refuse it), gives it back; and
    hears why a handshake failed (`handshake_failure`), to count it."""

    def admit(self) -> bool: ...
    def release(self) -> None: ...
    def handshake_failed(self, reason: str) -> None: ...


def handshake_failure(exc: BaseException) -> str:
    """A failed handshake's metric reason: `tls_` and OpenSSL's own reason (a bounded set:
    `tls_peer_did_not_return_a_certificate`, `tls_unsupported_protocol` ...), the timeout, or
    the connection lost during it."""
    if isinstance(exc, TimeoutError):
        return "tls_handshake_timeout"
    if isinstance(exc, ssl.SSLError) and isinstance(exc.reason, str):
        return "tls_" + exc.reason.lower()
    return "tls_connection_lost"


class Closing(Protocol):
    """A protocol that says when its connection is over (HboneConnection does)."""

    closed: asyncio.Future[None]


class TlsListener:
    def __init__(
        self,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        factory: Callable[[], Closing],
        gate: Gatekeeper,
        *,
        handshake_timeout_s: float,
    ) -> None:
        self.sock, self.ctx, self.factory, self.gate = sock, ctx, factory, gate
        self.handshake_timeout_s = handshake_timeout_s
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._ready)

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def is_serving(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Stop accepting; connections already accepted carry on."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    log.warning("accept paused for %.1fs: %s", FD_PAUSE_S, exc)
                    self._pause()
                else:  # not raised into the loop: the listener carries on
                    log.warning("accept failed: %s", exc)
                return
            if not self.gate.admit():
                _reset(conn)
                continue
            task = self._loop.create_task(self._handshake(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self._paused = self._loop.call_later(FD_PAUSE_S, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._ready)

    async def _handshake(self, conn: socket.socket) -> None:
        protocol = self.factory()
        protocol.closed.add_done_callback(lambda _: self.gate.release())
        try:
            await self._loop.connect_accepted_socket(
                lambda: cast(asyncio.Protocol, protocol),
                conn,
                ssl=self.ctx,
                ssl_handshake_timeout=self.handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # the transport closed the socket
            log.debug("TLS handshake failed: %s", exc)
            self.gate.handshake_failed(handshake_failure(exc))
            _over(protocol)
        except BaseException:
            conn.close()
            _over(protocol)
            raise


def _over(protocol: Closing) -> None:
    """A connection whose handshake failed is over too: whoever waits on it hears so (its
    protocol was never made, so it will never be lost)."""
    if not protocol.closed.done():
        protocol.closed.set_result(None)


def _reset(conn: socket.socket) -> None:
    """Close with RST: the client learns at once, and no TIME_WAIT is left here."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, sockets.LINGER_ZERO)
    finally:
        conn.close()
