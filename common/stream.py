"""Sans-IO: one bidirectional HTTP/2 stream carrying JSON messages — the config stream's wire.

h2 owns the HTTP/2 state machine (settings, flow control, PING); this module adds what the
config stream needs on top: gRPC's length-prefixed message framing (1 byte flags, 4 bytes
big-endian length, then the payload — here JSON), a size cap checked before buffering, and
sending that respects the peer's flow-control window. One stream per connection (the server
advertises MAX_CONCURRENT_STREAMS 1, as an ADS stream is alone on its connection in practice).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

PREFIX = struct.Struct("!BI")  # gRPC length-prefixed message: compressed flag, length
MAX_MESSAGE = 64 * 1024 * 1024  # a 10 000-pod snapshot is ~3 MiB; room for 20x
WINDOW = 16 * 1024 * 1024  # stream and connection receive windows (ztunnel's connection size)
MAX_FRAME = 1024 * 1024
CONTENT_TYPE = "application/x-ambientmesh-config+json"


class StreamError(Exception):
    """The peer broke the protocol (bad framing, oversized or non-JSON message)."""


class MessageChannel:
    def __init__(self, *, client_side: bool, max_message: int = MAX_MESSAGE) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.client_side = client_side
        self.max_message = max_message
        self.stream_id: int | None = None
        self.request_headers: dict[str, str] = {}
        self.response_status: int | None = None
        self.closed = False
        self.close_reason = ""
        self._inbound = bytearray()
        self._outbound = bytearray()
        self._open = False  # headers sent: DATA may follow
        self.conn.initiate_connection()
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1,
        }
        if client_side:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        self.conn.update_settings(settings)
        self.conn.increment_flow_control_window(WINDOW - int(self.conn.inbound_flow_control_window))

    # --- opening ---------------------------------------------------------------------
    def open(self, path: str, headers: dict[str, str]) -> None:
        """Client: the one request that carries the stream."""
        self.stream_id = self.conn.get_next_available_stream_id()
        request = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "controller"),
            ("content-type", CONTENT_TYPE),
        ]
        self.conn.send_headers(self.stream_id, request + list(headers.items()))
        self._open = True

    def respond(self, status: int) -> None:
        """Server: 200 opens the message flow; anything else refuses and ends the stream."""
        assert self.stream_id is not None
        headers = [(":status", str(status)), ("content-type", CONTENT_TYPE)]
        self.conn.send_headers(self.stream_id, headers, end_stream=status != 200)
        if status != 200:
            self._close(f"refused with {status}")
        self._open = True

    # --- messages --------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        self._outbound += PREFIX.pack(0, len(payload)) + payload
        self._flush()

    def receive(self, data: bytes) -> list[dict[str, Any]]:
        """Feed bytes from the socket; the complete messages they finish."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._close(f"HTTP/2 protocol error: {exc}")
            return []
        messages: list[dict[str, Any]] = []
        for event in events:
            messages.extend(self._on_event(event))
        self._flush()
        return messages

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    @property
    def pending(self) -> int:
        """Bytes waiting for the peer's flow-control window."""
        return len(self._outbound)

    def ping(self) -> None:
        self.conn.ping(b"ambient!")

    def close(self, reason: str) -> None:
        if not self.closed:
            self.conn.close_connection()
            self._close(reason)

    # --- internals -------------------------------------------------------------------
    def _close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = self.close_reason or reason

    def _on_event(self, event: h2.events.Event) -> list[dict[str, Any]]:
        if isinstance(event, h2.events.RequestReceived):
            if self.client_side or self.stream_id is not None:
                self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return []
            self.stream_id = event.stream_id
            self.request_headers = {str(k): str(v) for k, v in event.headers or []}
        elif isinstance(event, h2.events.ResponseReceived):
            headers = {str(k): str(v) for k, v in event.headers or []}
            self.response_status = int(headers.get(":status", "0"))
        elif isinstance(event, h2.events.DataReceived) and event.stream_id == self.stream_id:
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._inbound += event.data or b""
            return self._messages()
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            if event.stream_id == self.stream_id:
                self._close("stream ended by peer")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close(f"connection closed by peer ({event.error_code!r})")
        return []

    def _messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(self._inbound) >= PREFIX.size:
            flags, length = PREFIX.unpack_from(self._inbound)
            if flags != 0 or length > self.max_message:
                self._fail(f"message of {length} bytes (flags {flags}) refused")
                return out
            if len(self._inbound) < PREFIX.size + length:
                break
            payload = bytes(self._inbound[PREFIX.size : PREFIX.size + length])
            del self._inbound[: PREFIX.size + length]
            try:
                message = json.loads(payload)
            except ValueError as exc:
                self._fail(f"message is not JSON: {exc}")
                return out
            if not isinstance(message, dict):
                self._fail("message is not a JSON object")
                return out
            out.append(message)
        return out

    def _fail(self, reason: str) -> None:
        self.conn.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._inbound.clear()
        self._close(reason)

    def _flush(self) -> None:
        """Move queued bytes into h2 as far as the peer's windows allow."""
        if self.stream_id is None or self.closed or not self._open:
            return
        while self._outbound:
            window = self.conn.local_flow_control_window(self.stream_id)
            size = min(window, self.conn.max_outbound_frame_size, len(self._outbound))
            if size <= 0:
                return
            self.conn.send_data(self.stream_id, bytes(self._outbound[:size]))
            del self._outbound[:size]
