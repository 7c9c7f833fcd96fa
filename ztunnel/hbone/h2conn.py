"""h2's H2Connection with the changes the HBONE data path needs, pinned to h2 4.x and tested.

h2 stays the authority for connection and stream state, windows and every frame's validity;
what changes is how DATA bytes get in and out, and one refusal:

1. Outbound DATA without h2's serialization (PERF.md). `send_data` copies every payload byte
   four times (DataFrame body, frame, join, `data_to_send`); profiling put that at a quarter of
   a sending ztunnel's CPU. `send_available` makes the same checks and the same bookkeeping
   through h2's own state machines and windows, then queues a 9-byte header and the payload as
   they are; `data_to_send_buffers` hands both, in order with h2's own frames, to `writelines`.
   Both directions skip the state machines' steps that h2's own tables make no-ops (DATA on an
   open connection or stream): per 1 KiB message, what is left is what h2 has to decide.
2. Inbound DATA without h2's reader: its FrameBuffer copies every received byte three times,
   a fifth of a receiving ztunnel's CPU. `receive_data`, and `get_buffer`/`buffer_updated`
   for a transport that reads into the buffer we lend, cut frames with `frames.FrameReader`
   (at most one copy per payload; none for a payload that spans reads). A DATA frame on an
   open stream goes through the steps of h2's DATA handler (connection and stream state
   machines, both windows, the DataReceived event) without a hyperframe frame and its trace
   repr; on any other stream it goes to that handler itself (closed-stream and reset rules).
   Every other frame goes to h2's parser as bytes, as do the preface, padded DATA and DATA
   inside a header block, so h2's checks judge them.
   tests/unit/hbone/test_h2conn.py holds it to h2's own behaviour, frame by frame.
3. RELIABILITY H-7: a peer stream beyond our advertised MAX_CONCURRENT_STREAMS is refused
   alone, with RST_STREAM(REFUSED_STREAM) as RFC 9113 §5.1.2 allows, where h2 would tear down
   the whole connection (TooManyStreamsError). The override keeps HPACK in step, the stream id
   order, and h2's record of streams it reset (later frames on them get RST_STREAM too).
4. Graceful GOAWAY (RFC 9113 §6.8: "a server [...] sends a GOAWAY frame [...] while
   continuing to process streams already initiated"). h2 treats every GOAWAY, sent or
   received, as the end of the connection, which would cut every tunnel of a peer that drains
   (as ztunnel and Envoy do, with NO_ERROR) and keep us from draining gracefully ourselves.
   A GOAWAY with NO_ERROR is instead recorded (`peer_last_stream_id`), reported as h2's
   ConnectionTerminated event, and the connection stays open for streams up to its last
   stream id; `send_graceful_goaway` sends one without closing. Any other error code is h2's
   terminal GOAWAY, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.stream
import hyperframe.frame
from h2.errors import ErrorCodes

from ztunnel.hbone.frames import HEADER, Frame, FrameReader, FrameTooLarge


def _data_frame_repr(frame: hyperframe.frame.DataFrame) -> str:
    return f"<{len(frame.data)} bytes>"


# h2 builds `repr(frame)` for a trace log line on every received frame, whatever the log level,
# and hyperframe's DATA repr serializes and hex-encodes the whole payload: O(payload) of work per
# received byte (PERF.md). A constant-time repr for DATA frames keeps h2 as it is otherwise.
hyperframe.frame.DataFrame._body_repr = _data_frame_repr  # type: ignore[method-assign,assignment]

DATA = 0x0
END_STREAM = 0x1
PADDED = 0x8
END_HEADERS = 0x4
HEADER_BLOCK = frozenset({0x1, 0x5, 0x9})  # HEADERS, PUSH_PROMISE, CONTINUATION
# Until our SETTINGS are acknowledged h2 reports no header list size: ztunnel's 64 KiB holds.
HEADER_BLOCK_DEFAULT = 64 * 1024
PREFACE_SIZE = 24  # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113 §3.4), checked by h2
RECORD = 16 * 1024  # a TLS record's payload: smaller buffers are merged into one write


# Stream states in which a DATA frame is taken (RFC 9113 §5.1): elsewhere h2 answers it.
# Tuples, not sets, for these per-message checks: membership in a tuple compares identity
# first, where a set hashes the enum member with Enum.__hash__, a Python-level call.
_RECEIVING = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)


def _no_ops(transitions: dict[tuple[Any, Any], tuple[Any, Any]], input_: Any) -> tuple[Any, ...]:
    """The states in which h2's own transition table takes `input_` with no callback and no
    change of state: there, feeding it to the state machine does nothing, and it costs a
    per-message Python call (two enum hashes) the data path skips. Read from h2's tables, so
    h2 still decides which states those are."""
    return tuple(
        state
        for (state, given), (callback, target) in transitions.items()
        if given == input_ and callback is None and target == state
    )


_CONNECTION_TABLE = h2.connection.H2ConnectionStateMachine._transitions
_SEND_DATA_NO_OP = _no_ops(_CONNECTION_TABLE, h2.connection.ConnectionInputs.SEND_DATA)
_RECV_DATA_NO_OP = _no_ops(_CONNECTION_TABLE, h2.connection.ConnectionInputs.RECV_DATA)
_STREAM_SEND_DATA_NO_OP = _no_ops(h2.stream._transitions, h2.stream.StreamInputs.SEND_DATA)


def _as_bytes(payload: bytes | bytearray) -> bytes:
    """h2 only measures a DATA payload and hands it on in its event: a payload's own read
    buffer (frames.py) serves as it is, uncopied."""
    return cast(bytes, payload)


def _data_frame(frame: Frame) -> hyperframe.frame.DataFrame:
    data_frame = hyperframe.frame.DataFrame(frame.stream_id, _as_bytes(frame.payload))
    if frame.flags & END_STREAM:
        data_frame.flags.add("END_STREAM")
    return data_frame


class H2Connection(h2.connection.H2Connection):
    # How many closed streams h2 remembers, to tell a late frame on a stream it reset (a
    # stream error) from one on a stream that ended (a connection error). h2's 2**16 cost a
    # pooled connection ~100 B per stream until it held 6.5 MiB (the soak's RSS growth). A
    # peer's frames in flight after our RST_STREAM arrive within a round trip, and at most
    # 100 streams are open at once; nghttp2 keeps about max_concurrent_streams closed ones,
    # Go's http2 none (it judges by the stream id alone).
    MAX_CLOSED_STREAMS = 1024

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._out: list[bytes] = []
        self._reader = FrameReader(self.max_inbound_frame_size)
        self._preface_left = 0 if config.client_side else PREFACE_SIZE
        self._preface = bytearray(self._preface_left)
        self._block = 0  # bytes of the header block being received (H-6)
        self.header_block_open = False  # a HEADERS frame came without END_HEADERS (C-2)
        self.peer_last_stream_id: int | None = None  # the peer's graceful GOAWAY, if any

    def send_available(
        self, stream_id: int, data: bytes | bytearray | memoryview, limit: int
    ) -> int:
        """Queues DATA frames for as much of `data` as both windows (and `limit`) allow, cut at
        the peer's frame size; returns how many bytes were taken. Raises for a stream h2 would
        not send on. A whole `bytes` read that fits one frame is queued as it is (no copy)."""
        window = self.local_flow_control_window(stream_id)  # raises for a closed stream
        size = min(len(data), window, limit)
        if size <= 0:
            return 0
        if self.state_machine.state not in _SEND_DATA_NO_OP:
            self.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
        stream = self.streams[stream_id]
        if stream.state_machine.state not in _STREAM_SEND_DATA_NO_OP:
            stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._move_control_frames()
        frame = self.max_outbound_frame_size
        if type(data) is bytes and size == len(data) <= frame:
            self._queue(HEADER.pack(size >> 16, size & 0xFFFF, DATA, 0, stream_id))
            self._queue(data)
            return size
        view = memoryview(data)
        for start in range(0, size, frame):
            chunk = bytes(view[start : min(start + frame, size)])
            length = len(chunk)
            self._queue(HEADER.pack(length >> 16, length & 0xFFFF, DATA, 0, stream_id))
            self._queue(chunk)
        return size

    def _queue(self, buffer: bytes) -> None:
        """Small neighbours are merged (one TLS record and one write instead of several: what
        a 1 KiB round trip pays for); large payloads stay as they are (no copy)."""
        if self._out and len(self._out[-1]) + len(buffer) <= RECORD:
            self._out[-1] += buffer
        else:
            self._out.append(buffer)

    def _move_control_frames(self) -> None:
        if self._data_to_send:
            self._queue(bytes(self._data_to_send))
            self._data_to_send = bytearray()

    def has_output(self) -> bool:
        return bool(self._out or self._data_to_send)

    def data_to_send_buffers(self) -> list[bytes]:
        self._move_control_frames()
        out, self._out = self._out, []
        return out

    def data_to_send(self, amount: int | None = None) -> bytes:
        if not self._out:
            return super().data_to_send(amount)
        assert amount is None, "partial reads of the queue are not used"
        return b"".join(self.data_to_send_buffers())

    # --- inbound -------------------------------------------------------------------------------

    def receive_data(self, data: Any) -> list[h2.events.Event]:
        data = bytes(data)
        events: list[h2.events.Event] = []
        if self._preface_left:
            preface, data = data[: self._preface_left], data[self._preface_left :]
            self._preface_left -= len(preface)
            events += super().receive_data(preface)
        return events + self._receive_frames(self._reader.feed(data))

    def get_buffer(self) -> memoryview:
        """Where the next read goes (asyncio.BufferedProtocol): the preface's own buffer first,
        then the frame reader's."""
        if self._preface_left:
            return memoryview(self._preface)[PREFACE_SIZE - self._preface_left :]
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> list[h2.events.Event]:
        """The events of the `nbytes` just read into `get_buffer`'s buffer."""
        if self._preface_left:
            start = PREFACE_SIZE - self._preface_left
            self._preface_left -= nbytes
            return super().receive_data(bytes(self._preface[start : start + nbytes]))
        return self._receive_frames(self._reader.buffer_updated(nbytes))

    def _receive_frames(self, frames: Iterable[Frame]) -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        try:
            for frame in frames:
                if frame.type == DATA and self._takes_data_directly(frame):
                    events += self._receive_data(frame)
                else:
                    if frame.type in HEADER_BLOCK:
                        self._count_header_block(frame)
                    events += super().receive_data(frame.header + frame.payload)
                # A SETTINGS ack may have changed what the next header may announce.
                self._reader.max_frame_size = self.max_inbound_frame_size
        except FrameTooLarge as exc:
            # h2's own answer, as its receive_data gives it (there: once the body is in).
            self._terminate_connection(ErrorCodes.FRAME_SIZE_ERROR)
            raise h2.exceptions.FrameTooLargeError(str(exc)) from None
        return events

    def _count_header_block(self, frame: Frame) -> None:
        """RELIABILITY H-6 (CVE-2024-27316 class): a header block may take no more bytes than
        the header list we advertise, whatever number of CONTINUATION frames it comes in. h2
        checks the list only once the block is whole, and caps the frames (64) but not their
        bytes: up to 64 MiB at our 1 MiB frame size. Past it: GOAWAY(ENHANCE_YOUR_CALM)."""
        self._block += frame.length
        limit = self.local_settings.max_header_list_size or HEADER_BLOCK_DEFAULT
        if self._block > limit:
            self._terminate_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            raise h2.exceptions.DenialOfServiceError(
                f"header block of more than {limit} bytes (header list limit)"
            )
        if frame.flags & END_HEADERS:
            self._block = 0
            self.header_block_open = False
        else:
            self.header_block_open = True

    def _takes_data_directly(self, frame: Frame) -> bool:
        return (
            frame.stream_id != 0
            and not frame.flags & PADDED
            and not self.incoming_buffer._headers_buffer  # not inside a header block
        )

    def _receive_data(self, frame: Frame) -> list[h2.events.Event]:
        """What h2's receive_data does with one DATA frame from its own parser. On an open
        stream (the data path) it takes the steps of h2's `_receive_data_frame` itself, without
        building a hyperframe frame and its trace repr: h2's state machines and windows still
        judge it. Anything else (unknown, closed or reset streams) goes through h2's handler."""
        try:
            stream = self.streams.get(frame.stream_id)
            if stream is None or stream.state_machine.state not in _RECEIVING:
                return self._receive_frame(_data_frame(frame))
            if self.state_machine.state not in _RECV_DATA_NO_OP:
                self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_DATA)
            self._inbound_flow_control_window_manager.window_consumed(frame.length)
            frames, events = stream.receive_data(
                _as_bytes(frame.payload), bool(frame.flags & END_STREAM), frame.length
            )
        except h2.exceptions.ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        if frames:
            self._prepare_for_sending(frames)
        return events

    def _receive_headers_frame(self, frame: Any) -> Any:
        excess = (
            not self.config.client_side
            and frame.stream_id not in self.streams
            and self.open_inbound_streams + 1 > self.local_settings.max_concurrent_streams
        )
        if not excess:
            return super()._receive_headers_frame(frame)
        h2.connection._decode_headers(self.decoder, frame.data)  # HPACK state stays in step
        self.highest_inbound_stream_id = max(self.highest_inbound_stream_id, frame.stream_id)
        self._closed_streams[frame.stream_id] = h2.stream.StreamClosedBy.SEND_RST_STREAM
        refuse = hyperframe.frame.RstStreamFrame(frame.stream_id)
        refuse.error_code = ErrorCodes.REFUSED_STREAM
        return [refuse], []

    # --- graceful GOAWAY (4) ------------------------------------------------------------------

    def send_graceful_goaway(self, last_stream_id: int) -> None:
        """GOAWAY(NO_ERROR, `last_stream_id`) with the connection kept open for the streams
        up to it (a drain); `close_connection` ends it later."""
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._data_to_send += frame.serialize()

    def _receive_goaway_frame(self, frame: Any) -> Any:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        last = int(frame.last_stream_id)
        if self.peer_last_stream_id is not None:
            last = min(last, self.peer_last_stream_id)  # it may only go down (§6.8)
        self.peer_last_stream_id = last
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = last
        event.additional_data = frame.additional_data or None
        return [], [event]
