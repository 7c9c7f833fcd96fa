"""Cutting a received HTTP/2 byte stream into whole frames, sans-IO, with at most one copy of a
payload, and none for a payload that spans reads.

h2's own reader (FrameBuffer + hyperframe) copies every received byte three times: into its
buffer, out as a frame slice, and into the frame's `data`: a fifth of a receiving ztunnel's CPU
when profiled. This reader is fed the way `asyncio.BufferedProtocol` is (`get_buffer`, then
`buffer_updated`): a read lands in a scratch buffer shared by the process, whole frames are cut
from it (one copy of each payload), and a frame whose payload has not all arrived gets a buffer
of its own, into which the following reads are decrypted directly: the large DATA frames of a
bulk transfer are never copied here, nor joined by the TLS transport, which copies every read
of more than one TLS record into a new `bytes` for a plain `Protocol` (profiled: together ~7 % of
a receiving ztunnel's CPU). `feed` takes bytes, for transports that hand over `bytes`.
`h2conn.H2Connection` gives DATA frames to h2's state machines directly and every other frame
to h2's own parser, unchanged.

It only splits: every check on a frame's content stays h2's. The one check made here is the
length against our advertised SETTINGS_MAX_FRAME_SIZE, at the header, before a buffer is made
for the body (h2's reader waits for the whole body first). A frame's buffer is reserved at most
RESERVE bytes ahead of what has arrived, so a header alone cannot make us hold a 1 MiB frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

HEADER = struct.Struct("!BHBBL")  # 24-bit length (as 8 + 16 bits), type, flags, stream id
HEADER_SIZE = HEADER.size
STREAM_ID_MASK = 0x7FFFFFFF  # the reserved bit is ignored on receipt (RFC 9113 §4.1)
# What uvloop's and asyncio's TLS transports ask `get_buffer` for (their read size), so that
# one read decrypts every record the socket read brought.
SCRATCH_SIZE = 256 * 1024
# A frame's own buffer grows by this much ahead of its bytes: our ztunnels' DATA frames are one
# socket read (≤ 256 KiB), so theirs never grow; a peer's 1 MiB frame grows three times.
RESERVE = 256 * 1024


class FrameTooLarge(Exception):
    """A frame header announced more than we accept (the stream is unusable after it)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"Received overlong frame: length {length}, max {limit}")
        self.length = length


@dataclass(frozen=True, slots=True)
class Frame:
    length: int
    type: int
    flags: int
    stream_id: int
    header: bytes  # the 9 bytes as received
    payload: bytes | bytearray  # a bytearray: the frame's own buffer, handed over (not reused)


def parse_header(
    buffer: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the 9-byte frame header at `offset`."""
    high, low, kind, flags, stream_id = HEADER.unpack_from(buffer, offset)
    return (high << 16) | low, kind, flags, stream_id & STREAM_ID_MASK


class _Scratch:
    """The one read buffer of the process. A transport fills it and hands it back in the same
    callback (`get_buffer`, the read, `buffer_updated`), so reads never overlap; only its
    frames are cut lazily, while they are handled, and a read that came in meanwhile (a
    synchronous test transport) gets a buffer of its own."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(SCRATCH_SIZE))
        self.cutting = False


_SCRATCH = _Scratch()


class FrameReader:
    """Bytes in (any chunking), whole frames out, in order."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._head = b""  # the start of a header (< 9 bytes)
        self._header = b""  # the current frame's header, once its payload has a buffer
        self._length = 0  # and its length
        self._payload: bytearray | None = None  # that buffer (up to RESERVE ahead)
        self._filled = 0
        self._lent: memoryview | None = None  # the scratch the last get_buffer lent

    @property
    def buffered(self) -> int:
        held = HEADER_SIZE + self._filled if self._payload is not None else 0
        return len(self._head) + held

    # --- reads into our buffer (asyncio.BufferedProtocol) -----------------------------------------

    def get_buffer(self) -> memoryview:
        """Where the next read goes: the rest of the current frame's payload, else scratch."""
        if self._payload is not None:
            if self._filled == len(self._payload):
                self._grow(min(self._length, self._filled + RESERVE))
            return memoryview(self._payload)[self._filled :]
        lent = self._lent = (
            _SCRATCH.view if not _SCRATCH.cutting else memoryview(bytearray(SCRATCH_SIZE))
        )
        if not self._head:
            return lent
        lent[: len(self._head)] = self._head
        return lent[len(self._head) :]

    def buffer_updated(self, nbytes: int) -> Iterable[Frame]:
        """Frames completed by the `nbytes` just read into `get_buffer`'s buffer, cut as they
        are taken. Raises FrameTooLarge (the stream is then unusable)."""
        if self._payload is not None:
            self._filled += nbytes
            return (self._complete(),) if self._filled == self._length else ()
        lent, self._lent = self._lent, None
        assert lent is not None, "buffer_updated without get_buffer"
        end, self._head = len(self._head) + nbytes, b""
        return self._frames(lent, 0, end, shared=lent is _SCRATCH.view)

    # --- bytes handed over (asyncio.Protocol) -----------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Frame]:
        """Frames completed by `data`. Raises FrameTooLarge (the stream is then unusable)."""
        view, start = memoryview(data), 0
        if self._payload is not None:
            start = min(len(view), self._length - self._filled)
            filled = self._filled + start
            if filled > len(self._payload):
                self._grow(min(self._length, max(filled, self._filled + RESERVE)))
            self._payload[self._filled : filled] = view[:start]
            self._filled = filled
            if filled < self._length:
                return
            yield self._complete()
        elif self._head:
            view, self._head = memoryview(self._head + bytes(view)), b""
        yield from self._frames(view, start, len(view))

    # --- cutting ----------------------------------------------------------------------------------

    def _frames(
        self, view: memoryview, start: int, end: int, *, shared: bool = False
    ) -> Iterator[Frame]:
        """The whole frames in view[start:end], copied out; what is left is kept."""
        _SCRATCH.cutting |= shared
        try:
            while end - start >= HEADER_SIZE:
                high, low, kind, flags, stream_id = HEADER.unpack_from(view, start)
                length = (high << 16) | low
                if length > self.max_frame_size:
                    start = end  # nothing is kept of a stream that is now unusable
                    raise FrameTooLarge(length, self.max_frame_size)
                body = start + HEADER_SIZE
                if body + length > end:
                    break
                header, payload = bytes(view[start:body]), bytes(view[body : body + length])
                start = body + length
                yield Frame(length, kind, flags, stream_id & STREAM_ID_MASK, header, payload)
        finally:
            if start < end:
                self._keep(view, start, end)
            if shared:
                _SCRATCH.cutting = False

    def _keep(self, buffer: memoryview, start: int, end: int) -> None:
        """The tail of a read: a partial header, or a frame's first bytes in a buffer of its
        own (its header was checked when cut)."""
        if end - start < HEADER_SIZE:
            self._head = bytes(buffer[start:end])
            return
        body = start + HEADER_SIZE
        self._header, self._length = bytes(buffer[start:body]), parse_header(buffer, start)[0]
        self._filled = end - body
        self._payload = bytearray(min(self._length, self._filled + RESERVE))
        self._payload[: self._filled] = buffer[body:end]

    def _grow(self, size: int) -> None:
        """A new buffer, not a resize: a transport may still hold a view of the old one."""
        assert self._payload is not None
        grown = bytearray(size)
        grown[: self._filled] = memoryview(self._payload)[: self._filled]
        self._payload = grown

    def _complete(self) -> Frame:
        assert self._payload is not None
        length, kind, flags, stream_id = parse_header(self._header)
        frame = Frame(length, kind, flags, stream_id, self._header, self._payload)
        self._payload, self._filled = None, 0
        return frame
