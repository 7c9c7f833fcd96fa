"""The asyncio edge of one HBONE connection: feeds the TLS transport's bytes to the sans-IO
protocol, dispatches events to per-stream handlers, writes what the protocol wants sent, and owns
the connection's timers (keepalive PING, idle close). Serializes writes in one place: `_flush`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from api.spiffe import SpiffeId
from ztunnel.hbone import protocol as p
from ztunnel.hbone.h2conn import RECORD
from ztunnel.hbone.protocol import ErrorCodes

log = logging.getLogger("ztunnel.hbone")

# ztunnel (h2.rs): PING every 10 s, give up after 20 s without an answer.
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 20.0
IDLE_TIMEOUT_S = 300.0  # a pooled connection with no streams is closed after this
# A send that fills a TLS record of its own goes out at once even with several streams (see
# `_flush_soon`): held to the iteration's end, a socket's several 256 KiB reads (libuv reads a
# ready socket up to 32 times) piled into one multi-MiB TLS write.
BULK = RECORD


class StreamHandler(Protocol):
    """What one stream's owner (a tunnel) hears from the connection."""

    def on_response(self, status: int) -> None: ...
    def on_data(self, data: bytes | bytearray, flow_controlled_length: int) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, error_code: int) -> None: ...
    def on_writable(self) -> None: ...
    def on_write_paused(self) -> None: ...


RequestCallback = Callable[["HboneConnection", p.ConnectRequest], None]
DEFAULT_LIMITS = p.Limits()


class HboneConnection(asyncio.BufferedProtocol):
    def __init__(
        self,
        *,
        client: bool,
        limits: p.Limits = DEFAULT_LIMITS,
        on_request: RequestCallback | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        verify_peer: Callable[[asyncio.Transport], SpiffeId] | None = None,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self.proto = p.HboneProtocol(client=client, limits=limits, clock=time.monotonic)
        self.on_request = on_request
        self.idle_timeout_s = idle_timeout_s
        self.verify_peer = verify_peer
        self.on_fault = on_fault  # counts a close for the peer's fault (its metric reason)
        self.handlers: dict[int, StreamHandler] = {}
        self.transport: asyncio.Transport | None = None
        self.peer: SpiffeId | None = None  # set once verified, by whoever made the connection
        self.peer_addr: tuple[str, int] = ("", 0)
        # Kept: `get_running_loop()` costs a getpid() syscall, and every write asks for it.
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self.write_paused = False
        self.retired = False  # no new streams (the peer refused one: it is draining)
        self._drained = False  # close once the last stream ends (`close_when_idle`)
        self._last_rx = self._last_ping = time.monotonic()
        self._idle_since: float | None = time.monotonic()
        self._paused_since = 0.0
        # The timer ticks often enough for the shortest timeout to fire within half of it.
        self._tick_s = min(PING_INTERVAL_S, limits.header_timeout_s / 2, limits.stall_timeout_s / 2)
        self._timer: asyncio.TimerHandle | None = None
        self._flush_pending = False
        self._wrote_this_tick = False

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls_transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.peer_addr = transport.get_extra_info("peername") or ("", 0)
        if self.verify_peer is not None:
            # Server side: the handshake just finished; the peer is checked before a single
            # HTTP/2 byte is read or written (a raising verifier aborts the connection).
            try:
                self.peer = self.verify_peer(tls_transport)
            except Exception:
                tls_transport.abort()
                raise
        self.transport = tls_transport
        self.proto.start()
        self._flush()
        self._timer = self._loop.call_later(self._tick_s, self._tick)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # verification failed: the connection is being aborted
        self._last_rx = time.monotonic()
        for event in self.proto.receive(data):
            self._dispatch(event)
        self._flush()

    # A TLS transport decrypts into the buffer a BufferedProtocol lends it: a large DATA
    # frame's payload straight into its own buffer, with no join of the records (frames.py).
    # data_received serves transports that hand over bytes (and tests' in-memory ones).

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.proto.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None:
            return  # verification failed: the connection is being aborted
        self._last_rx = time.monotonic()
        for event in self.proto.buffer_updated(nbytes):
            self._dispatch(event)
        self._flush()

    def eof_received(self) -> bool:
        return False  # TLS: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer:
            self._timer.cancel()
        handlers, self.handlers = self.handlers, {}
        for handler in handlers.values():
            handler.on_reset(ErrorCodes.CANCEL)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._paused_since = time.monotonic()
        for handler in list(self.handlers.values()):
            handler.on_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.proto.peer_read_progress()
        for handler in list(self.handlers.values()):
            handler.on_writable()

    # --- events ----------------------------------------------------------------------------------

    def _dispatch(self, event: p.Event) -> None:
        handle = _DISPATCH.get(type(event))
        if handle is None:
            return
        stream_id = getattr(event, "stream_id", 0)
        if not stream_id:
            handle(self, event)
            return
        try:
            handle(self, event)
        except Exception:
            # One tunnel's failure ends its stream, never the connection other tunnels share
            # (an exception here would close the transport under all of them).
            log.exception("HBONE stream %d from %s: handler failed", stream_id, self.peer_addr)
            self._fault("stream_handler_error")
            handler = self._forget(stream_id)
            self.proto.reset(stream_id, ErrorCodes.INTERNAL_ERROR)
            if handler is not None:
                with contextlib.suppress(Exception):
                    handler.on_reset(ErrorCodes.INTERNAL_ERROR)

    def _on_connect(self, event: p.ConnectRequest) -> None:
        if self.on_request is None:
            self.proto.reset(event.stream_id, ErrorCodes.REFUSED_STREAM)
        else:
            self.on_request(self, event)

    def _on_response(self, event: p.Response) -> None:
        if handler := self.handlers.get(event.stream_id):
            handler.on_response(event.status)

    def _on_data(self, event: p.Data) -> None:
        if handler := self.handlers.get(event.stream_id):
            handler.on_data(event.data, event.flow_controlled_length)
        else:
            self.proto.ack(event.stream_id, event.flow_controlled_length)

    def _on_end(self, event: p.EndOfStream) -> None:
        if handler := self.handlers.get(event.stream_id):
            handler.on_end()

    def _on_reset(self, event: p.Reset) -> None:
        if handler := self._forget(event.stream_id):
            handler.on_reset(event.error_code)

    def _on_window(self, event: p.WindowOpened) -> None:
        if event.stream_id == 0:
            targets = list(self.handlers.values())
        else:
            targets = [h for h in [self.handlers.get(event.stream_id)] if h]
        for handler in targets:
            handler.on_writable()

    def _on_going_away(self, event: p.GoingAway) -> None:
        log.info(
            "HBONE peer %s drains: streams up to %d go on", self.peer_addr, event.last_stream_id
        )
        self._close_if_done()

    def _on_closed(self, event: p.Closed) -> None:
        log.info("HBONE connection %s closed: %s", self.peer_addr, event.reason)
        if event.fault:
            self._fault(event.fault)
        self._close_soon()

    # --- streams ---------------------------------------------------------------------------------

    def register(self, stream_id: int, handler: StreamHandler) -> None:
        self.handlers[stream_id] = handler
        self._idle_since = None

    def _forget(self, stream_id: int) -> StreamHandler | None:
        handler = self.handlers.pop(stream_id, None)
        if not self.handlers:
            self._idle_since = time.monotonic()
            self._close_if_done()
        return handler

    def finished(self, stream_id: int) -> None:
        """The tunnel on `stream_id` is done with it (both halves closed or reset)."""
        self._forget(stream_id)

    def open_stream(self, authority: str, headers: dict[str, str], handler: StreamHandler) -> int:
        stream_id = self.proto.open(authority, headers)
        self.register(stream_id, handler)
        self._flush_soon()
        return stream_id

    def respond(self, stream_id: int, status: int, *, end: bool = False) -> None:
        self.proto.respond(stream_id, status, end=end)
        self._flush_soon()

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        taken = self.proto.send(stream_id, data)
        if taken >= BULK:
            self._flush()
        else:
            self._flush_soon()
        return taken

    def end(self, stream_id: int) -> None:
        self.proto.end(stream_id)
        self._flush_soon()

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self._forget(stream_id)
        self.proto.reset(stream_id, code)
        self._flush_soon()

    def ack(self, stream_id: int, size: int) -> None:
        self.proto.ack(stream_id, size)
        # A lone stream's ack rarely has anything to send (h2 sends a WINDOW_UPDATE per half
        # window consumed); with several, it also marks the iteration as written (see above).
        if self.proto.has_output() or len(self.handlers) > 1:
            self._flush_soon()

    @property
    def usable(self) -> bool:
        return (
            not self.retired
            and self.transport is not None
            and not self.transport.is_closing()
            and (self.proto.closed is None)
            and not self.proto.going_away  # either side drains: no new stream on it
        )

    @property
    def accepting_streams(self) -> bool:
        return self.usable and self.proto.accepting_streams

    def drain(self) -> None:
        """Server: GOAWAY(NO_ERROR) now, the streams already accepted go on, and the connection
        closes when the last of them ends (or at `goaway`, the drain deadline)."""
        self.proto.graceful_goaway()
        self._flush()
        self._close_if_done()

    def close_when_idle(self) -> None:
        """Client: our own drain. No new stream; close as soon as none is left."""
        self.retired = self._drained = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        """A connection going away (either side's drain) closes once it carries nothing."""
        going = self._drained or self.proto.going_away
        if going and not self.handlers and self.proto.closed is None:
            self.goaway(reason="drained")

    def goaway(self, code: int = ErrorCodes.NO_ERROR, reason: str = "local close") -> None:
        self.proto.goaway(code, reason)
        self._flush()
        self._close_soon()

    # --- plumbing --------------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.proto.data_to_send_buffers()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(data)
            if self.transport.get_write_buffer_size() == 0:
                self.proto.peer_read_progress()

    def _flush_soon(self) -> None:
        """A lone stream's frames go out at once: its round trip pays no extra loop iteration.
        With several streams, the first write of a loop iteration goes out at once (the peer
        starts on it) and later ones wait for the iteration's end and go out together: one
        TLS write and one syscall for all of them. Reading a socket batch flushes at its end.
        Bulk sends (`BULK`) do not wait: they gain nothing from sharing a write."""
        if len(self.handlers) <= 1 and not self._flush_pending:
            self._flush()
        elif not self._wrote_this_tick:
            self._wrote_this_tick = True
            self._loop.call_soon(self._end_tick)
            self._flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush_now)

    def _end_tick(self) -> None:
        self._wrote_this_tick = False

    def _flush_now(self) -> None:
        self._flush_pending = False
        self._flush()

    def _close_soon(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_rx > PING_INTERVAL_S + PING_TIMEOUT_S:
            log.warning(
                "HBONE peer %s silent for %.0fs: closing", self.peer_addr, now - self._last_rx
            )
            self._abort()
            return
        if self.write_paused and now - self._paused_since > self.proto.limits.stall_timeout_s:
            # RELIABILITY H-10: the peer reads nothing, not even our PINGs.
            log.warning(
                "HBONE peer %s has read nothing for %.0fs: closing",
                self.peer_addr,
                now - self._paused_since,
            )
            self._fault("hbone_peer_not_reading")
            self._abort()
            return
        if self._idle_since is not None and now - self._idle_since > self.idle_timeout_s:
            self.goaway(reason="idle")
            return
        for event in self.proto.expire(now):
            if isinstance(event, p.Reset):
                log.warning("HBONE stream %d to %s stalled: reset", event.stream_id, self.peer_addr)
                self._fault("h2_stream_stalled")
            self._dispatch(event)
        if self.proto.closed is not None:
            return  # closed by a timeout (`_on_closed`)
        if now - self._last_ping >= PING_INTERVAL_S - self._tick_s / 2:  # a timer may be early
            self._last_ping = now
            self.proto.ping(int(now * 1000).to_bytes(8, "big"))
        self._flush()
        self._timer = self._loop.call_later(self._tick_s, self._tick)

    def _fault(self, reason: str) -> None:
        if self.on_fault is not None:
            self.on_fault(reason)

    def _abort(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()


_DISPATCH: dict[type, Callable[[HboneConnection, Any], None]] = {
    p.ConnectRequest: HboneConnection._on_connect,
    p.Response: HboneConnection._on_response,
    p.Data: HboneConnection._on_data,
    p.EndOfStream: HboneConnection._on_end,
    p.Reset: HboneConnection._on_reset,
    p.WindowOpened: HboneConnection._on_window,
    p.GoingAway: HboneConnection._on_going_away,
    p.Closed: HboneConnection._on_closed,
}
