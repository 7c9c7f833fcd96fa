"""HTTP/1.1 on the wire, sans-IO: messages parsed by llhttp (through httptools, in strict mode)
into events, and the heads and body framing the waypoint writes.

h11 did this in pure Python at ~95 µs per proxied exchange, about half the waypoint's CPU per
request; llhttp (Node's parser, as uvicorn uses it) does it in C. What h11 gave us and llhttp
does not, this module adds, so the waypoint accepts no more than it did:
- a Transfer-Encoding other than exactly `chunked` is refused (501): h11 had no other codings,
  and llhttp accepts `gzip, chunked`, which re-framing as chunked would corrupt;
- a request or status line and headers over `max_head` bytes are refused (431) while they
  arrive, before httptools has buffered more than one read beyond the limit;
- only HTTP/1.0 and 1.1 (505), and header values without surrounding whitespace;
- a HEAD response ends at its head (httptools cannot tell llhttp that it has no body), so the
  reader is spent afterwards (`spent`): any byte after it would be a protocol error anyway;
- a WebSocket handshake (RFC 6455 §4) ends HTTP/1.1 on its connection: after the request's
  head, and after a 101 answer to it, the reader is spent and keeps what followed in `tail`.
  Other Upgrade requests (h2c) are read as plain ones and the exchange stays HTTP/1.1.
llhttp's strict mode refuses bare LF, obs-fold (400: RFC 9112 §5.2 allows refusing it), both
Content-Length and Transfer-Encoding, differing or repeated Content-Length, bad chunk framing,
control characters in values and unknown methods.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import httptools


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status` is what a server answers (400, 431, 501, 505)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class _BodySkipped(Exception):
    """Raised from llhttp's callback to end a HEAD response at its head."""


@dataclass(slots=True)
class Head:
    """A request's or response's head. Names are lower-case, values stripped (latin-1)."""

    headers: list[tuple[str, str]]
    version: str  # "1.0" | "1.1"
    keep_alive: bool  # llhttp's reading of version and Connection
    method: str = ""  # requests
    target: str = ""
    status: int = 0  # responses
    reason: bytes = b""
    length: int | None = None  # Content-Length, if framed by it
    chunked: bool = False
    until_close: bool = False  # a response body that ends when the connection does
    upgrade: bool = False  # a request llhttp parsed as CONNECT or Upgrade (no body follows)
    websocket: bool = False  # a request to switch to WebSocket (GET, HTTP/1.1, Upgrade)


@dataclass(slots=True)
class End:
    """The end of a message, with its trailers (chunked bodies only)."""

    trailers: list[tuple[str, str]] = field(default_factory=list)


CLOSED = "closed"  # the peer closed between messages
Event = Head | bytes | End | str


class _Reader:
    """Feeds bytes to llhttp and queues what it finds; `next_event()` is None when it needs
    more (`feed(b"")` is the peer's FIN)."""

    parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self, max_head: int) -> None:
        self.max_head = max_head
        self.spent = False
        self.tail = b""  # what followed a protocol switch: the new protocol's first bytes
        self._events: deque[Event] = deque()
        self._in_head = False
        self._in_body = False
        self._head: Head | None = None
        self._fed = 0  # bytes fed since the last head or body bytes (what httptools may hold)
        self._size = 0  # the current head's URL and header bytes
        self._url = b""
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._error: ProtocolError | None = None  # raised in a callback
        self._failure: ProtocolError | None = None

    def next_event(self) -> Event | None:
        """The next event; None: feed more. A protocol error is raised once the events read
        before it are out (h11's order: pipelined requests ahead of garbage are served)."""
        if self._events:
            return self._events.popleft()
        if self._failure is not None:
            raise self._failure
        return None

    def feed(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            self._feed(data)
        except ProtocolError as exc:
            self._failure = exc

    def _feed(self, data: bytes) -> None:
        if self.spent:
            if data:
                raise ProtocolError("data after the end of the exchange")
            return
        if not data:
            self._eof()
            return
        if self._fed > self.max_head:  # httptools keeps a header until its end: bound it
            if self._in_body:
                raise ProtocolError(f"{self._fed} bytes of chunk framing or trailers")
            raise ProtocolError(f"head over {self.max_head} bytes", 431)
        self._fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data, exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _BodySkipped):
                self.spent = True
                return
            raise self._error or ProtocolError(str(exc)) from None
        except httptools.HttpParserInvalidMethodError as exc:
            raise ProtocolError(str(exc), 501) from None
        except httptools.HttpParserError as exc:
            raise self._error or ProtocolError(str(exc)) from None

    def _upgraded(self, data: bytes, offset: int) -> None:
        raise ProtocolError("unexpected protocol switch")

    def _switched(self, data: bytes, offset: int) -> None:
        """HTTP/1.1 ends here: llhttp will parse no more, the rest is the new protocol's."""
        self._in_body = False
        self.spent = True
        self.tail = data[offset:]

    def _eof(self) -> None:
        if self._in_body and self._head is not None and self._head.until_close:
            self._in_body = False
            self._events.append(End())
        elif self._in_head or self._in_body:
            raise ProtocolError("connection closed mid-message")
        else:
            self.spent = True
            self._events.append(CLOSED)

    def _count(self, size: int) -> None:
        self._size += size
        if self._size > self.max_head:
            self._error = ProtocolError(f"head over {self.max_head} bytes", 431)
            raise self._error

    # --- llhttp's callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head, self._size = True, 0
        self._url, self._reason, self._headers = b"", b"", []

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_status(self, reason: bytes) -> None:
        self._count(len(reason))
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # _count, inline: this runs for every header of every message.
        self._size += len(name) + len(value) + 4  # trailers have a budget of their own
        if self._size > self.max_head:
            self._count(0)
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t")))

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._error = ProtocolError(f"HTTP/{version}", 505)
            raise self._error
        head = Head(self._headers, version, self.parser.should_keep_alive())
        for name, value in self._headers:
            if name == "content-length":
                head.length = int(value)  # llhttp admits digits only, and one value
            elif name == "transfer-encoding":
                if value.lower() != "chunked" or head.chunked:
                    self._error = ProtocolError(f"Transfer-Encoding {value[:40]!r}", 501)
                    raise self._error
                head.chunked = True
        self._head = head
        self._in_head, self._in_body, self._fed, self._size = False, True, 0, 0
        self._headers = []  # what follows the body is trailers
        self._complete_head(head)
        self._events.append(head)

    def _complete_head(self, head: Head) -> None:
        raise NotImplementedError

    def on_body(self, body: bytes) -> None:
        self._fed = 0
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._events.append(End(self._headers))
        self._headers = []


class RequestReader(_Reader):
    """A client's requests, in order (pipelined ones are queued, not lost)."""

    def __init__(self, max_head: int) -> None:
        super().__init__(max_head)
        self.parser = httptools.HttpRequestParser(self)

    def _complete_head(self, head: Head) -> None:
        parser = self.parser
        assert isinstance(parser, httptools.HttpRequestParser)
        head.method = parser.get_method().decode("ascii")
        head.target = self._url.decode("latin-1")
        head.upgrade = parser.should_upgrade()
        if head.upgrade and (head.chunked or head.length):
            # llhttp takes what follows an Upgrade head for the new protocol, not its body.
            self._error = ProtocolError("Upgrade request with a body")
            raise self._error
        head.websocket = (
            head.upgrade
            and head.method == "GET"
            and head.version == "1.1"
            and "websocket" in upgrade_tokens(head.headers)
        )

    def _upgraded(self, data: bytes, offset: int) -> None:
        if self._head is not None and self._head.websocket:
            self._switched(data, offset)
            return
        # Any other Upgrade is stripped (hop by hop), so the exchange stays HTTP/1.1: llhttp was
        # resumed by httptools, and what follows the head is the next request.
        self._in_body = False
        if offset < len(data):
            self._feed(data[offset:])


class ResponseReader(_Reader):
    """A server's responses on one upstream connection; `expect(method)` before each."""

    def __init__(self, max_head: int) -> None:
        super().__init__(max_head)
        self.parser = httptools.HttpResponseParser(self)
        self._head_request = False
        self._switch_asked = False

    def expect(self, method: str, *, websocket: bool = False) -> None:
        self._head_request = method == "HEAD"
        self._switch_asked = websocket

    def _upgraded(self, data: bytes, offset: int) -> None:
        if not (self._switch_asked and self._head is not None and self._head.status == 101):
            raise ProtocolError("unexpected protocol switch")
        self._switched(data, offset)

    def _complete_head(self, head: Head) -> None:
        parser = self.parser
        assert isinstance(parser, httptools.HttpResponseParser)
        head.status = parser.get_status_code()
        head.reason = self._reason
        bodiless = head.status < 200 or head.status in (204, 304)
        head.until_close = not (bodiless or head.chunked or head.length is not None)
        if self._head_request and not bodiless:
            self._events.append(head)
            self._events.append(End())
            self._in_body = False
            raise _BodySkipped


def upgrade_tokens(headers: list[tuple[str, str]]) -> set[str]:
    """The protocols `Upgrade` names, lower-case, without versions (RFC 9110 §7.8)."""
    return {
        token.strip().split("/")[0].lower()
        for name, value in headers
        if name == "upgrade"
        for token in value.split(",")
    }


# --- writing -------------------------------------------------------------------------------------


def _lines(start: str, headers: list[tuple[str, str]]) -> bytes:
    # Values came through llhttp (no CR, LF or NUL) or are ours: nothing to escape.
    parts = [start]
    parts.extend(f"{name}: {value}" for name, value in headers)
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    return _lines(f"{method} {target} HTTP/1.1", headers)


def response_head(status: int, reason: bytes, headers: list[tuple[str, str]]) -> bytes:
    return _lines(f"HTTP/1.1 {status} {reason.decode('latin-1')}", headers)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: list[tuple[str, str]]) -> bytes:
    return _lines("0", trailers)
