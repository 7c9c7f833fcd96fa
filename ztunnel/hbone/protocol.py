"""HBONE protocol, sans-IO: bytes in, events out, `data_to_send()` out. No asyncio, no sockets.

HTTP/2 framing, HPACK, flow control and stream states are h2's. This layer adds what HBONE needs
and h2 leaves to its user:
- request rules: CONNECT only; `:authority` must be `ipv4:port` or `[ipv6]:port`; no `:path`,
  `:scheme` or `:protocol` (RFC 9113 §8.5). A non-CONNECT request gets 400 on its own stream.
- Rapid Reset (CVE-2023-44487): more than `max_resets` peer resets within `reset_window_s` →
  GOAWAY(ENHANCE_YOUR_CALM). h2 does not bound this.
- Control-frame flood against a peer that never reads (PING/SETTINGS acks piling up): more than
  `max_pending_control` answers queued without the peer reading → GOAWAY(ENHANCE_YOUR_CALM).
- Timeouts (RELIABILITY C-2, H-10), judged by `expire(now)`, which the edge calls on its timer:
  a server connection whose first request, or any header block, is not complete within
  `header_timeout_s` gets GOAWAY; a stream whose send window has let nothing through for
  `stall_timeout_s` while we had data for it is reset.
- Settings: concurrent streams, windows, header list size and frame size from `Limits`.
Errors are events (`Closed`, with who is to blame), never exceptions escaping `receive`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from h2.errors import ErrorCodes

from ztunnel.hbone.h2conn import H2Connection

# ztunnel's values (h2.rs / pool.rs) unless noted.
MAX_CONCURRENT_STREAMS = 200
MAX_HEADER_LIST_SIZE = 64 * 1024
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024  # the largest DATA frame we accept
# Rapid Reset: Envoy's default overload action trips on a much lower rate; 200 in 10 s leaves
# room for legitimate cancellations of a full stream table.
MAX_RESETS = 200
RESET_WINDOW_S = 10.0
# PING/SETTINGS acks we will queue for a peer that does not read (Envoy: 1000 outbound control
# frames, http2.outbound_control_flood).
MAX_PENDING_CONTROL = 1000
# The first CONNECT follows the TLS handshake at once (a ztunnel or waypoint opens a connection
# for a stream it has); a header block is one burst of frames. hyper's HTTP/1 header read
# timeout is 30 s, nginx's client_header_timeout 60 s; a machine peer needs far less.
HEADER_TIMEOUT_S = 10.0
# A peer that lets no byte of a stream through for this long has stopped reading it. Envoy's
# stream idle timeout (5 min) also ends a stream held by a closed window; Helidon's HTTP/2
# flow-control timeout is 15 s. Long, because a TCP tunnel's reader may pause for a while.
STALL_TIMEOUT_S = 300.0
SEND_FRAMES = 64  # DATA frames one `send` queues at most: bounds the work of one call
# Acks of small messages are handed to h2 in batches of up to this many bytes per stream (or
# less: see `_ack_batch`): h2 sends a WINDOW_UPDATE only per half window consumed anyway, and
# its bookkeeping was a sixth of the per-message cost of a 1 KiB round trip.
ACK_BATCH = 16 * 1024
# Stream states in which the peer may still send DATA (acks held back are owed to it).
_PEER_SENDING = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)


@dataclass(frozen=True)
class Limits:
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    max_header_list_size: int = MAX_HEADER_LIST_SIZE
    stream_window: int = STREAM_WINDOW
    connection_window: int = CONNECTION_WINDOW
    max_frame_size: int = MAX_FRAME_SIZE
    max_resets: int = MAX_RESETS
    reset_window_s: float = RESET_WINDOW_S
    max_pending_control: int = MAX_PENDING_CONTROL
    header_timeout_s: float = HEADER_TIMEOUT_S
    stall_timeout_s: float = STALL_TIMEOUT_S


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectRequest:
    """Server side: a valid CONNECT for `authority` (normalized `ip:port`)."""

    stream_id: int
    authority: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Response:
    """Client side: the answer to our CONNECT."""

    stream_id: int
    status: int


@dataclass(slots=True)  # not frozen: one per received message, and frozen costs 3x to build
class Data:
    stream_id: int
    data: bytes | bytearray  # a bytearray: a large payload's own read buffer, handed over
    flow_controlled_length: int  # pass back to `ack` once consumed


@dataclass(frozen=True)
class EndOfStream:
    """The peer half-closed the stream (TCP FIN of its side)."""

    stream_id: int


@dataclass(frozen=True)
class Reset:
    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True)
class WindowOpened:
    """Flow-control window grew: sends blocked on `stream_id` (0: all streams) may go on."""

    stream_id: int


@dataclass(frozen=True)
class GoingAway:
    """The peer drains (GOAWAY with NO_ERROR): streams up to `last_stream_id` go on, no new
    ones may be opened; ours above it were never processed (a `Reset` REFUSED_STREAM each)."""

    last_stream_id: int


@dataclass(frozen=True)
class Closed:
    """The connection is over. `remote` says who is to blame; `reason` is for logs. `fault`:
    the metric reason when we closed it for what the peer did (a bounded set), else ""."""

    error_code: int
    reason: str
    remote: bool
    fault: str = ""


def protocol_fault(code: int) -> str:
    """The metric reason of a connection closed for the peer's protocol error: `h2_` and the
    RFC 9113 §7 name (`h2_protocol_error`, `h2_enhance_your_calm` ...)."""
    try:
        return "h2_" + ErrorCodes(code).name.lower()
    except ValueError:
        return "h2_unknown_error"


__all__ = ["ErrorCodes"]

Event = ConnectRequest | Response | Data | EndOfStream | Reset | WindowOpened | GoingAway | Closed


class AuthorityError(ValueError):
    pass


def parse_authority(authority: str) -> tuple[str, int]:
    """`ipv4:port` or `[ipv6]:port` → (ip, port). Hostnames are refused: HBONE targets IPs."""
    host, sep, port_s = authority.rpartition(":")
    if not sep or not port_s.isascii() or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise AuthorityError(f"authority {authority!r} needs a numeric port 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version = 6
    else:
        version = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AuthorityError(f"authority {authority!r} is not an IP address") from None
    if ip.version != version:
        raise AuthorityError(f"authority {authority!r}: IPv6 must be in brackets")
    return str(ip), int(port_s)


def format_authority(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class HboneProtocol:
    """One HBONE connection, client or server side."""

    def __init__(
        self, *, client: bool, limits: Limits = Limits(), clock: Callable[[], float]
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=client, header_encoding="utf-8", validate_inbound_headers=True
        )
        self.client = client
        self.limits = limits
        self.clock = clock
        self.h2 = H2Connection(config=config)
        self.closed: Closed | None = None
        self.last_stream_id: int | None = None  # our graceful GOAWAY's, once sent (a drain)
        self._resets: deque[float] = deque()
        self._pending_control = 0
        self._held: dict[int, int] = {}  # stream id → consumed bytes not yet handed to h2
        self._waiting_since: float | None = None  # server: opened, no request complete yet
        self._block_since: float | None = None  # a header block open since
        self._stalled: dict[int, float] = {}  # stream id → last send progress while blocked
        # Held acks never starve a sender: per stream they stay under an eighth of its window,
        # and over every stream under an eighth of the connection's (h2 itself returns window
        # once half of it is consumed).
        self._ack_batch = min(
            ACK_BATCH,
            limits.stream_window // 8,
            limits.connection_window // (8 * max(1, limits.max_concurrent_streams)),
        )

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.h2.initiate_connection()
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.limits.stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_list_size,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: self.limits.max_frame_size,
        }
        if self.client:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        else:
            self._waiting_since = self.clock()
        self.h2.update_settings(settings)
        extra = self.limits.connection_window - int(self.h2.inbound_flow_control_window)
        if extra > 0:
            self.h2.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()

    def data_to_send_buffers(self) -> list[bytes]:
        """The same bytes as `data_to_send`, as buffers for `writelines` (no joining copy)."""
        return self.h2.data_to_send_buffers()

    def has_output(self) -> bool:
        return self.h2.has_output()

    def peer_read_progress(self) -> None:
        """The edge saw our output drain: the peer is reading, so queued acks were delivered."""
        self._pending_control = 0

    def goaway(self, code: int = ErrorCodes.NO_ERROR, reason: str = "local close") -> Closed:
        if self.closed is None:
            self.h2.close_connection(error_code=code)
            self.closed = Closed(code, reason, remote=False)
        return self.closed

    def graceful_goaway(self) -> None:
        """Server: drain. GOAWAY(NO_ERROR) naming the last stream we accepted; those go on,
        later ones are refused (REFUSED_STREAM: safe to retry elsewhere). `goaway` ends it."""
        if self.closed is None and self.last_stream_id is None:
            self.last_stream_id = int(self.h2.highest_inbound_stream_id)
            self.h2.send_graceful_goaway(self.last_stream_id)

    @property
    def going_away(self) -> bool:
        return self.last_stream_id is not None or self.h2.peer_last_stream_id is not None

    @property
    def open_streams(self) -> int:
        return int(self.h2.open_outbound_streams + self.h2.open_inbound_streams)

    @property
    def accepting_streams(self) -> bool:
        """Client side: may another stream be opened on this connection now?"""
        return (
            self.closed is None
            and self.h2.peer_last_stream_id is None
            and self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams
        )

    # --- input ------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        if self.closed is not None:
            return []
        return self._received(self.h2.receive_data, data)

    def get_buffer(self) -> memoryview:
        """Where the next read goes, for `buffer_updated` (asyncio.BufferedProtocol): a large
        DATA payload is read into a buffer of its own, which its Data event carries."""
        return self.h2.get_buffer()

    def buffer_updated(self, nbytes: int) -> list[Event]:
        if self.closed is not None:
            return []
        return self._received(self.h2.buffer_updated, nbytes)

    def _received(self, receive: Callable[[Any], list[h2.events.Event]], read: Any) -> list[Event]:
        try:
            raw = receive(read)
        except UnicodeDecodeError as exc:
            # h2 decodes header values (header_encoding) before its own checks: a value that
            # is not UTF-8 is the peer's protocol error, and the connection ends with a GOAWAY
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
            self.closed = Closed(
                ErrorCodes.PROTOCOL_ERROR, f"header not UTF-8: {exc}", True, "h2_header_not_utf8"
            )
            return [self.closed]
        except h2.exceptions.ProtocolError as exc:
            # h2 has already queued a GOAWAY with the right code.
            code = int(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
            self.closed = Closed(code, f"protocol error: {exc}", True, protocol_fault(code))
            return [self.closed]
        if self.h2.header_block_open:
            if self._block_since is None:
                self._block_since = self.clock()
        else:
            self._block_since = None
        events: list[Event] = []
        for event in raw:
            events.extend(self._translate(event))
            if self.closed is not None:
                return [*events, self.closed] if self.closed not in events else events
        return events

    def _translate(self, event: h2.events.Event) -> list[Event]:  # noqa: PLR0911 - a dispatch
        if type(event) is h2.events.DataReceived:  # the data path's: first
            data, length = event.data or b"", event.flow_controlled_length or 0
            if not data and not length:
                return []  # the empty frame that carries END_STREAM
            return [Data(event.stream_id or 0, data, length)]
        if isinstance(event, h2.events.RequestReceived):
            return self._request(event)
        if isinstance(event, h2.events.ResponseReceived):
            status = {str(k): str(v) for k, v in event.headers or []}.get(":status", "0")
            code = int(status) if status.isascii() and status.isdigit() else 0  # 0: not 200
            return [Response(int(event.stream_id or 0), code)]
        if isinstance(event, h2.events.StreamEnded):
            self._release(int(event.stream_id or 0))
            return [EndOfStream(int(event.stream_id or 0))]
        if isinstance(event, h2.events.StreamReset):
            self._release(int(event.stream_id or 0))
            self._stalled.pop(int(event.stream_id or 0), None)
            return self._reset(event)
        if isinstance(event, h2.events.WindowUpdated):
            return [WindowOpened(int(event.stream_id or 0))]
        if isinstance(event, h2.events.RemoteSettingsChanged):
            return self._control(opens_window=True)
        if isinstance(event, h2.events.PingReceived):
            return self._control(opens_window=False)
        if isinstance(event, h2.events.ConnectionTerminated):
            if self.h2.peer_last_stream_id is not None and event.error_code == 0:
                return self._going_away(self.h2.peer_last_stream_id)
            self.closed = Closed(int(event.error_code or 0), "peer sent GOAWAY", remote=True)
            return [self.closed]
        return []

    def _going_away(self, last_stream_id: int) -> list[Event]:
        events: list[Event] = [GoingAway(last_stream_id)]
        ours = 1 if self.client else 0  # client streams are odd
        for stream_id, stream in list(self.h2.streams.items()):
            if stream_id % 2 == ours and stream_id > last_stream_id and not stream.closed:
                self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
                events.append(Reset(stream_id, ErrorCodes.REFUSED_STREAM, remote=True))
        return events

    def _control(self, *, opens_window: bool) -> list[Event]:
        self._pending_control += 1
        if self._pending_control > self.limits.max_pending_control:
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, "control frame flood while not reading")
            self.closed = Closed(
                ErrorCodes.ENHANCE_YOUR_CALM,
                "control frame flood while not reading",
                True,
                "h2_control_flood",
            )
            return [self.closed]
        return [WindowOpened(0)] if opens_window else []

    def _reset(self, event: h2.events.StreamReset) -> list[Event]:
        stream_id = int(event.stream_id or 0)
        if event.remote_reset:
            now = self.clock()
            self._resets.append(now)
            while self._resets and self._resets[0] < now - self.limits.reset_window_s:
                self._resets.popleft()
            if len(self._resets) > self.limits.max_resets:
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, "rapid reset")
                self.closed = Closed(
                    ErrorCodes.ENHANCE_YOUR_CALM, "rapid reset", True, "h2_rapid_reset"
                )
                return [Reset(stream_id, int(event.error_code or 0), True), self.closed]
        return [Reset(stream_id, int(event.error_code or 0), bool(event.remote_reset))]

    def _request(self, event: h2.events.RequestReceived) -> list[Event]:
        stream_id = int(event.stream_id or 0)
        self._waiting_since = None
        if self.last_stream_id is not None and stream_id > self.last_stream_id:
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)  # after our GOAWAY: not processed
            return []
        headers: dict[str, str] = {}
        for name, value in event.headers or []:
            headers[str(name)] = str(value)
        if headers.get(":method") != "CONNECT":
            self._refuse(stream_id, 400)  # H-1: the connection goes on
            return []
        if any(k in headers for k in (":path", ":scheme", ":protocol")):
            self._refuse(stream_id, 400)  # RFC 9113 §8.5: CONNECT has neither
            return []
        try:
            ip, port = parse_authority(headers.get(":authority", ""))
        except AuthorityError:
            self._refuse(stream_id, 400)
            return []
        return [ConnectRequest(stream_id, format_authority(ip, port), headers)]

    def _refuse(self, stream_id: int, status: int) -> None:
        self.respond(stream_id, status, end=True)

    # --- output -----------------------------------------------------------------------------------

    def open(self, authority: str, headers: dict[str, str] | None = None) -> int:
        """Client: send CONNECT; returns the stream id (answer comes as a Response event)."""
        stream_id = int(self.h2.get_next_available_stream_id())
        pairs = [(":method", "CONNECT"), (":authority", authority)]
        pairs += list((headers or {}).items())
        self.h2.send_headers(stream_id, pairs)
        return stream_id

    def respond(self, stream_id: int, status: int, *, end: bool = False) -> None:
        with contextlib.suppress(
            h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError
        ):  # the peer reset it meanwhile
            self.h2.send_headers(stream_id, [(":status", str(status))], end_stream=end)

    def window(self, stream_id: int) -> int:
        try:
            return min(
                int(self.h2.local_flow_control_window(stream_id)),
                int(self.h2.max_outbound_frame_size) * SEND_FRAMES,
            )
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of `data` as flow control allows; returns how many bytes were taken."""
        try:
            limit = self.h2.max_outbound_frame_size * SEND_FRAMES
            taken = int(self.h2.send_available(stream_id, data, limit))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0
        if taken < len(data):
            # Held by the window: the stall clock starts, or restarts on any progress.
            if taken or stream_id not in self._stalled:
                self._stalled[stream_id] = self.clock()
        elif self._stalled:
            self._stalled.pop(stream_id, None)
        return taken

    def end(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.end_stream(stream_id)

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self._release(stream_id)
        self._stalled.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream_id, error_code=code)

    def ack(self, stream_id: int, size: int) -> None:
        """Bytes of `stream_id` were consumed downstream: let the peer send more. Small acks
        are held while the peer may still send on the stream, up to `_ack_batch` bytes; the
        rest, and whatever is held once the peer stops sending, go to h2 at once."""
        if size <= 0:
            return
        held = self._held.pop(stream_id, 0) + size
        if held < self._ack_batch:
            stream = self.h2.streams.get(stream_id)
            if stream is not None and stream.state_machine.state in _PEER_SENDING:
                self._held[stream_id] = held
                return
        self._acknowledge(stream_id, held)

    def _release(self, stream_id: int) -> None:
        """The peer sends no more on `stream_id`: acks held for it go to h2."""
        held = self._held.pop(stream_id, 0)
        if held:
            self._acknowledge(stream_id, held)

    def _acknowledge(self, stream_id: int, size: int) -> None:
        # h2 returns the connection window even when the stream is already gone; a
        # ProtocolError here only means the connection is closing.
        try:  # noqa: SIM105 - once per received message: suppress() is a context manager more
            self.h2.acknowledge_received_data(size, stream_id)
        except h2.exceptions.ProtocolError:
            pass

    def ping(self, opaque: bytes) -> None:
        self.h2.ping(opaque)

    # --- timeouts ---------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Event]:
        """What the timeouts end at `now`: a `Closed` (GOAWAY sent, fault `h2_header_timeout`)
        or a `Reset` (sent, `remote=False`) for each stream stalled past `stall_timeout_s`."""
        if self.closed is not None:
            return []
        limit = self.limits.header_timeout_s
        for since, what in ((self._waiting_since, "request"), (self._block_since, "header block")):
            if since is not None and now - since > limit:
                reason = f"{what} not complete within {limit:g}s"
                self.goaway(ErrorCodes.NO_ERROR, reason)
                self.closed = Closed(ErrorCodes.NO_ERROR, reason, True, "h2_header_timeout")
                return [self.closed]
        events: list[Event] = []
        for stream_id, since in list(self._stalled.items()):
            stream = self.h2.streams.get(stream_id)
            if stream is None or stream.closed:
                del self._stalled[stream_id]  # closed meanwhile
            elif now - since > self.limits.stall_timeout_s:
                self.reset(stream_id, ErrorCodes.CANCEL)
                events.append(Reset(stream_id, ErrorCodes.CANCEL, remote=False))
        return events
