"""TCP plumbing around tunnels: `Held` keeps a just-accepted connection still while ztunnel decides
where it goes; `Gate` buffers bytes of a fresh TLS connection until its peer is verified; `Splice`
relays TCP↔TCP (passthrough and plaintext inbound) with half-close and back-pressure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from ztunnel.hbone.connection import HboneConnection
from ztunnel.proxy import sockets


class Held(asyncio.Protocol):
    """An accepted connection, not reading, until `handoff` gives it its real protocol.

    Bytes that arrive anyway are kept and handed over: uvloop may start reading right after
    `connection_made` even though it paused (a regression test pins this: the first request of
    every captured connection was lost).
    """

    def __init__(self, on_made: Callable[[Held], None] | None = None) -> None:
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.pause_reading()
        if self.on_made:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def handoff(self, protocol: asyncio.Protocol) -> None:
        assert self.transport is not None
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if self.buffer:
            protocol.data_received(bytes(self.buffer))
            self.buffer.clear()
        if self.eof:
            protocol.eof_received()

    def refuse(self) -> None:
        """RST, so the client sees a refused connection at once (fail closed)."""
        if self.transport is not None:
            sockets.reset(self.transport)


class Gate(asyncio.Protocol):
    """Buffers a connection's bytes while something else decides (a TLS peer being verified,
    a SOCKS5 handshake being parsed), then hands them to the real protocol."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    async def arrival(self) -> None:
        """Returns once there are bytes to read or the connection is gone."""
        while not self.buffer and not self.lost:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def open(
        self, transport: asyncio.Transport, protocol: asyncio.Protocol | HboneConnection
    ) -> None:
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.buffer:
            protocol.data_received(bytes(self.buffer))


class _Half(asyncio.Protocol):
    def __init__(self, splice: Splice, index: int) -> None:
        self.splice, self.index = splice, index

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.splice.attached(self.index, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.splice.forward(self.index, data)

    def eof_received(self) -> bool:
        self.splice.eof(self.index)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.lost(self.index, exc)

    def pause_writing(self) -> None:
        other = self.splice.transports[1 - self.index]
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.splice.transports[1 - self.index]
        if other is not None and not other.is_closing():
            other.resume_reading()


class Splice:
    """Two TCP connections joined; index 0 is the client side, 1 the server side."""

    def __init__(self, on_close: Callable[[Splice], None] | None = None) -> None:
        self.transports: list[asyncio.Transport | None] = [None, None]
        self.halves = (_Half(self, 0), _Half(self, 1))
        self.bytes = [0, 0]  # bytes read from side 0 (request) and side 1 (response)
        self.eofs = [False, False]
        self.early = [bytearray(), bytearray()]  # for a side whose connection is not made yet
        self.started = time.monotonic()
        self.error = ""
        self.on_close = on_close
        self._done = False

    def attached(self, index: int, transport: asyncio.Transport) -> None:
        self.transports[index] = transport
        if self.early[index]:
            transport.write(bytes(self.early[index]))
            self.early[index].clear()
        if self.eofs[1 - index] and transport.can_write_eof():
            transport.write_eof()

    def forward(self, index: int, data: bytes) -> None:
        self.bytes[index] += len(data)
        other = self.transports[1 - index]
        if other is None:
            # The client may send before the server connection is made (bounded: the client
            # side is paused by the caller until then).
            self.early[1 - index] += data
        elif not other.is_closing():
            other.write(data)

    def eof(self, index: int) -> None:
        self.eofs[index] = True
        other = self.transports[1 - index]
        if other is not None and not other.is_closing() and other.can_write_eof():
            other.write_eof()
        if all(self.eofs):
            self.close()

    def lost(self, index: int, exc: Exception | None) -> None:
        if exc is not None:
            self.error = f"{'client' if index == 0 else 'server'}: {exc}"
        other = self.transports[1 - index]
        if other is not None and not self.eofs[index]:
            sockets.reset(other)  # a reset on one side is a reset on the other
        self.close()

    def cost(self) -> int:
        """Bytes held in memory: written to a side that has not taken them yet."""
        early = len(self.early[0]) + len(self.early[1])
        return early + sum(t.get_write_buffer_size() for t in self.transports if t is not None)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        for transport in self.transports:
            if transport is not None:
                transport.close()
        if self.on_close:
            self.on_close(self)

    def abort(self, reason: str) -> None:
        self.error = reason
        for transport in self.transports:
            if transport is not None:
                sockets.reset(transport)
        self.close()
