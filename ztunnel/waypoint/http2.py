"""HTTP/2 (prior knowledge, h2c) through the waypoint: h2 as the server to the client and as
the client of one upstream HTTP/2 connection, streams mapped one to one.

Per stream: the request headers are checked (`exchange.check_headers`, 400) and authorized
(403 `RBAC: access denied` on that stream; the connection and its other streams go on); an
allowed one is opened upstream with the same headers, and data, trailers, ends and resets are
relayed both ways. Flow control is end to end: received DATA is acknowledged to its sender only
once the other side's window took it, so each stream buffers at most the window it granted.
Limits: 100 concurrent streams, 64 KiB header lists (RELIABILITY H-6, H-7), and at most
`MAX_RESETS` client resets per `RESET_WINDOW_S` (Rapid Reset, H-8: then GOAWAY
ENHANCE_YOUR_CALM); 300 s idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ztunnel.waypoint.exchange import (
    DENIED_BODY,
    DENIED_STATUS,
    Exchange,
    Flow,
    Hooks,
    Refused,
    check_headers,
    forwardable,
    policy_request,
    protocol_of,
)
from ztunnel.waypoint.pipe import IdleTimer, Pipe, PipeReset

log = logging.getLogger("waypoint.http2")

MAX_STREAMS = 100  # Envoy's edge recommendation
MAX_HEADER_LIST = 64 * 1024
WINDOW = 1024 * 1024
MAX_RESETS = 200
RESET_WINDOW_S = 10.0
IDLE_TIMEOUT_S = 300.0


@dataclass
class _Stream:
    down_id: int
    record: Exchange
    up_id: int = 0
    to_up: list[tuple[bytes, int]] = field(default_factory=list)  # (data, to ack downstream)
    to_down: list[tuple[bytes, int]] = field(default_factory=list)  # (data, to ack upstream)
    end_up: bool = False  # END_STREAM to send upstream once to_up is empty
    end_down: bool = False
    trailers: list[tuple[str, str]] | None = None  # sent downstream after the data before them


def _settings(client: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client))
    conn.local_settings = h2.settings.Settings(
        client=client,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        },
    )
    return conn


def _text(headers: Any) -> list[tuple[str, str]]:
    return [
        (n.decode() if isinstance(n, bytes) else n, v.decode() if isinstance(v, bytes) else v)
        for n, v in headers
    ]


class Http2Session:
    def __init__(self, down: Pipe, flow: Flow, hooks: Hooks) -> None:
        self.down, self.flow, self.hooks = down, flow, hooks
        self.server = _settings(client=False)
        self.client: h2.connection.H2Connection | None = None
        self.up: Pipe | None = None
        self.by_down: dict[int, _Stream] = {}
        self.by_up: dict[int, _Stream] = {}
        self._resets: list[float] = []
        self._locks = (asyncio.Lock(), asyncio.Lock())
        self._up_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None

    def _expire(self) -> None:
        log.info("HTTP/2 connection from %s idle: closing", self.flow.src_ip)
        self.down.abort()
        if self.up is not None:
            self.up.abort()

    async def run(self, first: bytes) -> None:
        self.idle = IdleTimer(IDLE_TIMEOUT_S, self._expire)
        self.server.initiate_connection()
        self.server.increment_flow_control_window(WINDOW)
        try:
            await self._flush_down()
            data = first
            while True:
                if data:
                    await self._on_down(self.server.receive_data(data))
                    await self._flush_down()
                    await self._flush_up()
                data = await self.down.read()
                self.idle.touch()
                if not data:
                    break
        except (h2.exceptions.ProtocolError, PipeReset, TimeoutError, _Calm) as exc:
            log.info("HTTP/2 connection from %s ends: %r", self.flow.src_ip, exc)
            if isinstance(exc, h2.exceptions.ProtocolError | _Calm):
                code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
                with contextlib.suppress(h2.exceptions.ProtocolError, PipeReset):
                    self.server.close_connection(error_code=code)
                    await self._flush_down()
        finally:
            self.idle.cancel()
            for stream in list(self.by_down.values()):
                self._record(stream)
            if self._up_task is not None:
                self._up_task.cancel()
            if self.up is not None:
                self.up.abort()
            self.down.end()

    # --- downstream events ----------------------------------------------------------------------

    async def _on_down(self, events: list[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                await self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._down_data(event)
            elif isinstance(event, h2.events.StreamEnded):
                if stream := self.by_down.get(event.stream_id):
                    stream.end_up = True
                    self._pump_up()
            elif isinstance(event, h2.events.StreamReset):
                self._down_reset(event)
            elif isinstance(event, h2.events.WindowUpdated):
                self._pump_down()
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise PipeReset("client sent GOAWAY")

    async def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        headers = _text(event.headers or [])
        pseudo = dict(h for h in headers if h[0].startswith(":"))
        regular = [h for h in headers if not h[0].startswith(":")]
        record = Exchange(pseudo.get(":method", ""), protocol_of(regular))
        try:
            check_headers(regular)
            request = policy_request(
                self.flow,
                record.method,
                pseudo.get(":path", ""),
                pseudo.get(":authority", ""),
                regular,
                absolute=False,
            )
        except Refused as exc:
            log.info("HTTP/2 request from %s refused: %s", self.flow.src_ip, exc)
            self._local_reply(sid, record, exc.status, str(exc).encode()[:200])
            return
        self.flow.requests += 1
        decision = self.hooks.authorize(request)
        if not decision.allowed:
            log.info(
                "%s %s from %s denied: %s",
                record.method,
                request.path,
                self.flow.src_ip,
                decision.reason,
            )
            self._local_reply(sid, record, DENIED_STATUS, DENIED_BODY)
            return
        stream = _Stream(sid, record)
        self.by_down[sid] = stream
        try:
            client = await self._upstream()
        except (OSError, PipeReset, TimeoutError) as exc:
            log.info("upstream for %s:%d failed: %s", self.flow.dst_ip, self.flow.dst_port, exc)
            del self.by_down[sid]
            self._local_reply(sid, record, 503, b"upstream connect error")
            return
        stream.up_id = client.get_next_available_stream_id()
        self.by_up[stream.up_id] = stream
        # The upstream gets the path policy judged (RFC 9113 §8.3.1: :path is origin form)
        forward = [
            (name, request.target if name == ":path" else value)
            for name, value in headers
            if name.startswith(":")
        ] + forwardable(regular)
        client.send_headers(stream.up_id, forward)  # END_STREAM follows (StreamEnded)

    def _local_reply(self, sid: int, record: Exchange, status: int, body: bytes) -> None:
        record.status = status
        headers = [
            (":status", str(status)),
            ("content-type", "text/plain"),
            ("content-length", str(len(body))),
        ]
        with _gone_quietly():  # the client reset it already: nothing to answer
            self.server.send_headers(sid, headers)
            self.server.send_data(sid, body, end_stream=True)  # small: within any window
        record.response_bytes = len(body)
        self.hooks.record(record)

    def _down_data(self, event: h2.events.DataReceived) -> None:
        stream = self.by_down.get(event.stream_id)
        if stream is None:  # a denied stream's body: dropped, its window given back
            self.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.to_up.append((event.data or b"", event.flow_controlled_length))
        stream.record.request_bytes += len(event.data or b"")
        self._pump_up()

    def _down_reset(self, event: h2.events.StreamReset) -> None:
        now = time.monotonic()
        self._resets = [t for t in self._resets if now - t < RESET_WINDOW_S] + [now]
        if len(self._resets) > MAX_RESETS:
            raise _Calm("rapid reset")
        stream = self.by_down.pop(event.stream_id, None)
        if stream is not None and self.client is not None and stream.up_id:
            self.by_up.pop(stream.up_id, None)
            self.client.reset_stream(stream.up_id, h2.errors.ErrorCodes.CANCEL)
            self._record(stream)

    # --- upstream -------------------------------------------------------------------------------

    async def _upstream(self) -> h2.connection.H2Connection:
        if self.client is None:
            self.up = await self.hooks.upstream()
            self.client = _settings(client=True)
            self.client.initiate_connection()
            self.client.increment_flow_control_window(WINDOW)
            self._up_task = asyncio.ensure_future(self._read_up(self.up, self.client))
        return self.client

    async def _read_up(self, up: Pipe, client: h2.connection.H2Connection) -> None:
        try:
            while data := await up.read():
                self.idle.touch()
                self._on_up(client.receive_data(data))
                await self._flush_up()
                await self._flush_down()
        except (h2.exceptions.ProtocolError, PipeReset) as exc:
            log.info("upstream HTTP/2 for %s ended: %r", self.flow.src_ip, exc)
        # Upstream gone: its streams end for the client; new requests get a new connection.
        for stream in list(self.by_up.values()):
            self._end_down_stream(stream, reset=True)
        self.by_up.clear()
        self.client, self.up = None, None
        await self._flush_down()

    def _on_up(self, events: list[h2.events.Event]) -> None:
        for event in events:
            stream = self.by_up.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and stream:
                headers = _text(event.headers or [])
                status = dict(headers).get(":status", "0")
                stream.record.status = int(status) if status.isdigit() else 0
                keep = [h for h in headers if h[0].startswith(":")]
                keep += forwardable([h for h in headers if not h[0].startswith(":")])
                with _gone_quietly():
                    self.server.send_headers(
                        stream.down_id, keep, end_stream=bool(event.stream_ended)
                    )
                if event.stream_ended:
                    self._end_down_stream(stream, reset=False, sent=True)
            elif isinstance(event, h2.events.InformationalResponseReceived) and stream:
                with _gone_quietly():
                    self.server.send_headers(stream.down_id, _text(event.headers or []))
            elif isinstance(event, h2.events.TrailersReceived) and stream:
                stream.trailers = _text(event.headers or [])
                stream.end_down = True
                self._pump_down()
            elif isinstance(event, h2.events.DataReceived) and stream:
                stream.to_down.append((event.data or b"", event.flow_controlled_length))
                stream.record.response_bytes += len(event.data or b"")
                self._pump_down()
            elif isinstance(event, h2.events.StreamEnded) and stream:
                stream.end_down = True
                self._pump_down()
            elif isinstance(event, h2.events.StreamReset) and stream:
                self._end_down_stream(stream, reset=True)
            elif isinstance(event, h2.events.WindowUpdated):
                self._pump_up()
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise PipeReset("upstream sent GOAWAY")

    def _end_down_stream(self, stream: _Stream, *, reset: bool, sent: bool = False) -> None:
        self.by_up.pop(stream.up_id, None)
        if self.by_down.pop(stream.down_id, None) is None:
            return
        if reset and not sent:
            stream.record.status = stream.record.status or 502
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.server.reset_stream(stream.down_id, h2.errors.ErrorCodes.CANCEL)
        self._record(stream)

    # --- moving data within windows --------------------------------------------------------------

    def _pump_up(self) -> None:
        client = self.client
        if client is None:
            return
        for stream in list(self.by_down.values()):
            _move(stream.to_up, client, stream.up_id, self.server, stream.down_id)
            if stream.end_up and not stream.to_up and stream.up_id:
                stream.end_up = False
                client.end_stream(stream.up_id)

    def _pump_down(self) -> None:
        client = self.client
        for stream in list(self.by_down.values()):
            if client is not None:
                _move(stream.to_down, self.server, stream.down_id, client, stream.up_id)
            if stream.end_down and not stream.to_down:
                with _gone_quietly():
                    if stream.trailers is not None:
                        self.server.send_headers(stream.down_id, stream.trailers, end_stream=True)
                    else:
                        self.server.end_stream(stream.down_id)
                self._end_down_stream(stream, reset=False, sent=True)

    async def _flush_down(self) -> None:
        async with self._locks[0]:
            if data := self.server.data_to_send():
                await self.down.write(data)

    async def _flush_up(self) -> None:
        async with self._locks[1]:
            if (
                self.client is not None
                and self.up is not None
                and (data := self.client.data_to_send())
            ):
                await self.up.write(data)

    def _record(self, stream: _Stream) -> None:
        if not stream.record.status:
            stream.record.status = 0  # no response: the client or upstream went away
        self.hooks.record(stream.record)


def _gone_quietly() -> contextlib.AbstractContextManager[None]:
    """Writing to a stream the client has reset (its RST_STREAM is read but not yet handled)
    is no error of the connection's: the stream's own reset handling follows."""
    return contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError)


class _Calm(Exception):
    error_code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def _move(
    queue: list[tuple[bytes, int]],
    to: h2.connection.H2Connection,
    to_id: int,
    came: h2.connection.H2Connection,
    came_id: int,
) -> None:
    """Send queued DATA as `to`'s windows allow; acknowledge what was sent to `came`."""
    while queue:
        data, size = queue[0]
        try:
            room = min(to.local_flow_control_window(to_id), to.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            queue.clear()
            return
        if room <= 0 and data:
            return
        chunk = data[:room]
        to.send_data(to_id, chunk)
        if len(chunk) < len(data):
            queue[0] = (data[len(chunk) :], size)  # acked once all of it went
            continue
        queue.pop(0)
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            came.acknowledge_received_data(size, came_id)
