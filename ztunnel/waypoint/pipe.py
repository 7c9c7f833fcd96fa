"""Byte pipes the waypoint's HTTP code reads and writes: one HBONE stream (downstream from a
client's ztunnel, or upstream to a destination's ztunnel), or a plain TCP connection (a
destination outside the mesh).

Back-pressure is end to end: an HBONE stream's received bytes are acknowledged to the peer only
as `read` hands them out (so at most one stream window is buffered), and `write` waits for the
peer's window. `read` returns b"" at the peer's END_STREAM / FIN; a reset raises PipeReset.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ztunnel.hbone.connection import HboneConnection
from ztunnel.proxy import sockets


class PipeReset(ConnectionError):
    """The peer reset the stream or connection."""


class Pipe(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def end(self) -> None: ...
    def abort(self) -> None: ...


class HboneStream:
    """One HBONE stream as a Pipe (a `StreamHandler` of its connection)."""

    def __init__(self) -> None:
        self.conn: HboneConnection | None = None
        self.stream_id = 0
        self.response: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._eof = False
        self._reset: int | None = None
        self._ended = False

    def attach(self, conn: HboneConnection, stream_id: int) -> None:
        self.conn, self.stream_id = conn, stream_id

    # --- StreamHandler ---------------------------------------------------------------------------

    def on_response(self, status: int) -> None:
        if not self.response.done():
            self.response.set_result(status)

    def on_data(self, data: bytes | bytearray, flow_controlled_length: int) -> None:
        # A large payload comes in its own read buffer; the HTTP layers take bytes.
        self._chunks.append((data if type(data) is bytes else bytes(data), flow_controlled_length))
        self._readable.set()

    def on_end(self) -> None:
        self._eof = True
        self._readable.set()
        self._maybe_finish()

    def on_reset(self, error_code: int) -> None:
        self._reset = error_code
        if not self.response.done():
            self.response.set_result(0)
        self._readable.set()
        self._writable.set()

    def on_writable(self) -> None:
        self._writable.set()

    def on_write_paused(self) -> None:
        self._writable.clear()

    # --- Pipe ------------------------------------------------------------------------------------

    async def read(self) -> bytes:
        while not self._chunks:
            if self._reset is not None:
                raise PipeReset(f"stream reset ({self._reset})")
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data, size = self._chunks.popleft()
        if self.conn is not None:
            self.conn.ack(self.stream_id, size)
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._reset is not None or self.conn is None:
                raise PipeReset("stream reset")
            self._writable.clear()
            taken = self.conn.send(self.stream_id, view) if not self.conn.write_paused else 0
            view = view[taken:]
            if view:
                await self._writable.wait()

    def end(self) -> None:
        if self.conn is not None and not self._ended and self._reset is None:
            self._ended = True
            self.conn.end(self.stream_id)
        self._maybe_finish()

    def abort(self) -> None:
        if self.conn is not None and self._reset is None:
            self._reset = -1
            self.conn.reset(self.stream_id)
            self._readable.set()
            self._writable.set()

    def _maybe_finish(self) -> None:
        if self.conn is not None and self._ended and self._eof:
            self.conn.finished(self.stream_id)


class SocketPipe:
    """A TCP connection as a Pipe."""

    READ_SIZE = 256 * 1024

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        try:
            return await self.reader.read(self.READ_SIZE)
        except ConnectionError as exc:
            raise PipeReset(str(exc)) from None

    async def write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError as exc:
            raise PipeReset(str(exc)) from None

    def end(self) -> None:
        if not self.writer.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()

    def abort(self) -> None:
        sockets.reset(self.writer.transport)


class IdleTimer:
    """One timer per session instead of one per read (`asyncio.timeout` costs more than the
    read it guards): `touch()` on progress; after `limit_s` without any, `expire` runs (it
    aborts the session's pipes, so their readers get PipeReset)."""

    def __init__(self, limit_s: float, expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self.limit_s, self.expire = limit_s, expire
        self.last = self._loop.time()
        self._handle = self._loop.call_later(limit_s, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        idle = self._loop.time() - self.last
        if idle >= self.limit_s:
            self.expire()
        else:
            self._handle = self._loop.call_later(self.limit_s - idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


async def relay(a: Pipe, b: Pipe, progress: Callable[[], None] | None = None) -> tuple[int, int]:
    """Copy both ways until both ends finished (half-close carried across); a reset on either
    side aborts both. `progress` is called on every read. Returns the bytes a→b and b→a."""
    counts = [0, 0]

    async def copy(src: Pipe, dst: Pipe, i: int) -> None:
        while data := await src.read():
            counts[i] += len(data)
            if progress is not None:
                progress()
            await dst.write(data)
        dst.end()

    try:
        await asyncio.gather(copy(a, b, 0), copy(b, a, 1))
    except (PipeReset, OSError):
        a.abort()
        b.abort()
        raise
    return counts[0], counts[1]
