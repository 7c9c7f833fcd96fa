"""A tunnel: one TCP connection bridged to one HBONE stream, in both directions.

- TCP → stream: bytes go out as the stream's flow-control window allows; the rest waits and TCP
  reading pauses (back-pressure to the sender) until the window opens.
- stream → TCP: bytes are written to the socket and acknowledged to the peer (opening its window)
  only while the socket keeps up; when its write buffer is full, acks wait (back-pressure to the
  remote sender), so memory stays bounded by the windows.
- Half-close both ways: TCP EOF → END_STREAM; END_STREAM → TCP write_eof (FIN).
- Resets both ways: a TCP error → RST_STREAM; RST_STREAM → TCP abort (RST).
`on_close` gets the byte counts and the reason once, for metrics and the access log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from ztunnel.hbone.connection import HboneConnection
from ztunnel.proxy import sockets

log = logging.getLogger("ztunnel.relay")

MAX_PENDING = 256 * 1024  # TCP bytes held while the stream's window is shut (then reading pauses)


@dataclass
class TunnelStats:
    to_stream: int = 0  # bytes read from TCP and sent into the tunnel
    from_stream: int = 0  # bytes received from the tunnel and written to TCP
    started: float = 0.0
    error: str = ""


class Tunnel(asyncio.Protocol):
    def __init__(self, on_close: Callable[[Tunnel], None] | None = None) -> None:
        self.on_close = on_close
        self.tcp: asyncio.Transport | None = None
        self.conn: HboneConnection | None = None
        self.stream_id = 0
        self.stats = TunnelStats(started=time.monotonic())
        self._pending = bytearray()
        self._fresh: bytes | None = None  # a socket read not yet copied into _pending
        self._early = bytearray()  # stream bytes that came before the TCP side was connected
        self._unacked = 0
        self._tcp_write_paused = False
        self._tcp_eof = False
        self._stream_eof = False
        self._sent_end = False
        self._done = False
        self.status = 0  # HBONE response status (client side)
        self.reset_code: int | None = None  # RST_STREAM code, if the stream was reset
        self.response: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, conn: HboneConnection, stream_id: int) -> None:
        """The stream exists (server: request accepted; client: after 200)."""
        self.conn, self.stream_id = conn, stream_id
        if self._unacked and not self._tcp_write_paused:
            conn.ack(stream_id, self._unacked)
            self._unacked = 0
        self._pump()

    # --- TCP side (asyncio.Protocol) --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = self.tcp = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self._done:
            sockets.reset(tcp)  # the stream was reset while this connection was being made
            return
        if self.conn is None:
            tcp.pause_reading()  # nothing to send into until the stream is up
        if self._early:
            tcp.write(bytes(self._early))
            self._early.clear()
        if self._stream_eof:
            self._write_eof()

    def data_received(self, data: bytes) -> None:
        self.stats.to_stream += len(data)
        if self._pending or self.conn is None:
            self._pending += data
        else:
            self._fresh = data  # sent as it is when the window allows (no copy into _pending)
        self._pump()

    def eof_received(self) -> bool:
        self._tcp_eof = True
        self._pump()
        return True  # keep our write side open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        if exc is not None or not self._tcp_eof or not self._stream_eof:
            if self.conn is not None and not (self._sent_end and self._stream_eof):
                self.conn.reset(self.stream_id)
            if exc is not None:
                self.stats.error = f"tcp: {exc}"
        self._finish()

    def pause_writing(self) -> None:
        self._tcp_write_paused = True

    def resume_writing(self) -> None:
        self._tcp_write_paused = False
        if self.conn is not None and self._unacked:
            self.conn.ack(self.stream_id, self._unacked)
            self._unacked = 0

    # --- stream side (StreamHandler) --------------------------------------------------------------

    def on_response(self, status: int) -> None:
        self.status = status
        if not self.response.done():
            self.response.set_result(status)

    def on_data(self, data: bytes | bytearray, flow_controlled_length: int) -> None:
        self.stats.from_stream += len(data)
        if self.tcp is None:
            # A CONNECT client may send right behind its HEADERS: keep it (bounded by the
            # stream window, since we do not ack) until the upstream connection is made.
            self._early += data
            self._unacked += flow_controlled_length
            return
        if self.tcp.is_closing():
            if self.conn is not None:
                self.conn.ack(self.stream_id, flow_controlled_length)
            return
        self.tcp.write(data)
        if self._tcp_write_paused or self.conn is None:
            self._unacked += flow_controlled_length
        elif self.conn is not None:
            self.conn.ack(self.stream_id, flow_controlled_length)

    def on_end(self) -> None:
        self._stream_eof = True
        if self.tcp is not None and not self.tcp.is_closing():
            self._write_eof()
        self._maybe_finish()

    def on_reset(self, error_code: int) -> None:
        self.reset_code = error_code
        if not self.response.done():
            self.response.set_result(0)
        if self._done:
            return
        self.stats.error = self.stats.error or f"stream reset ({error_code})"
        if self.tcp is not None:
            sockets.reset(self.tcp)
        self._finish()

    def on_writable(self) -> None:
        self._pump()

    def on_write_paused(self) -> None:
        if self.tcp is not None:
            self.tcp.pause_reading()

    def cost(self) -> int:
        """Bytes this tunnel holds in memory: waiting for the stream's window or the socket."""
        held = len(self._pending) + len(self._early) + len(self._fresh or b"")
        return held + (self.tcp.get_write_buffer_size() if self.tcp is not None else 0)

    @property
    def done(self) -> bool:
        return self._done

    # --- internals ------------------------------------------------------------------------------

    def _write_eof(self) -> None:
        """FIN to the TCP peer. `shutdown` raises when the peer has already reset the socket
        (ENOTCONN): that is this tunnel's end, and must not propagate into the HBONE connection
        it shares with other tunnels (a regression: it closed all of them)."""
        assert self.tcp is not None
        if not self.tcp.can_write_eof():
            return
        try:
            self.tcp.write_eof()
        except OSError as exc:
            self.abort(f"tcp: {exc}")

    def _pump(self) -> None:
        conn, tcp = self.conn, self.tcp
        if conn is None or tcp is None or self._done:
            return
        if self._fresh is not None:
            fresh, self._fresh = self._fresh, None
            taken = conn.send(self.stream_id, fresh)
            self._pending += memoryview(fresh)[taken:]
        elif self._pending:
            taken = conn.send(self.stream_id, self._pending)
            del self._pending[:taken]
        if self._tcp_eof and not self._pending and not self._sent_end:
            self._sent_end = True
            conn.end(self.stream_id)
            self._maybe_finish()
        elif len(self._pending) >= MAX_PENDING or conn.write_paused:
            tcp.pause_reading()
        elif not self._tcp_eof and not tcp.is_closing():
            tcp.resume_reading()

    def _maybe_finish(self) -> None:
        if self._sent_end and self._stream_eof and not self._done:
            if self.tcp is not None:
                self.tcp.close()
            self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.conn is not None:
            self.conn.finished(self.stream_id)
        if not self.response.done():
            self.response.set_result(0)
        if self.on_close is not None:
            self.on_close(self)

    def abort(self, reason: str) -> None:
        """Close now (policy revoked, drain deadline): RST both ways."""
        self.stats.error = reason
        if self.conn is not None:
            self.conn.reset(self.stream_id)
        if self.tcp is not None:
            sockets.reset(self.tcp)
        self._finish()
