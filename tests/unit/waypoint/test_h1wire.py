"""h1wire's request reader against h11, the parser the waypoint used before (and the library
whose behaviour is the reference): valid requests in any chunking read the same; and bytes that
h1wire accepts, h11 accepts and reads the same — so moving to llhttp made the waypoint stricter,
never laxer (a laxer parser is a request-smuggling hole between policy and backend)."""

from __future__ import annotations

import re
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ztunnel.waypoint import h1wire
from ztunnel.waypoint.h1wire import CLOSED, End, Head, ProtocolError

Message = tuple[str, str, str, list[tuple[str, str]], bytes, list[tuple[str, str]]]
LIMIT = 16 * 1024

token = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^`|~",
    min_size=1,
    max_size=12,
)
value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20
).map(lambda v: v.strip(" \t"))
target = st.text("abcdefghijklmnopqrstuvwxyz0123456789/%?=&;:@!$'()*+,~-._", max_size=30)
plain = [n for n in ("x-a", "accept", "user-agent", "x-b")]
# Names whose meaning the generator sets itself: a random `HOST` made a second Host header,
# which both parsers rightly refuse (a failing example Hypothesis found).
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "upgrade"}
header_name = token.filter(lambda name: name.lower() not in FRAMING)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    lines = [f"{method} /{draw(target)} HTTP/{version}", f"Host: {draw(token)}"]
    lines += [f"{draw(header_name)}: {draw(value)}" for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        lines.append(f"Connection: {draw(st.sampled_from(['close', 'keep-alive']))}")
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    if framing == "length":
        data = draw(st.binary(max_size=50))
        lines.append(f"Content-Length: {len(data)}")
        body = data
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        for data in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3)):
            ext = draw(st.sampled_from(["", ";a=b", ";x"]))
            body += b"%x%s\r\n%s\r\n" % (len(data), ext.encode(), data)
        body += b"0\r\n"
        for _ in range(draw(st.integers(0, 2))):
            body += f"{draw(header_name)}: {draw(value)}\r\n".encode("latin-1")
        body += b"\r\n"
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True) if b > a]


def ours(chunks: list[bytes]) -> tuple[list[Message], bool]:
    """The complete messages h1wire reads, and whether it refused the bytes; a message without
    exactly one Host ends them, as the session refuses it (h11 did so in its parser)."""
    reader = h1wire.RequestReader(LIMIT)
    events: list[Any] = []
    refused = False
    try:
        for data in [*chunks, b""]:
            reader.feed(data)
            while (event := reader.next_event()) is not None:
                events.append(event)
                if event is CLOSED:
                    break
    except ProtocolError:
        refused = True
    messages: list[Message] = []
    head: Head | None = None
    body = b""
    for event in events:
        if isinstance(event, Head):
            head, body = event, b""
        elif isinstance(event, bytes):
            body += event
        elif isinstance(event, End) and head is not None:
            if sum(n == "host" for n, _ in head.headers) != 1:
                return messages, True
            if not (head.keep_alive and head.version == "1.1"):
                messages.append(
                    (head.method, head.target, head.version, head.headers, body, event.trailers)
                )
                return messages, refused  # the session closes after it: nothing more is read
            messages.append(
                (head.method, head.target, head.version, head.headers, body, event.trailers)
            )
        else:
            assert event is CLOSED
    return messages, refused


def _pairs(headers: Any) -> list[tuple[str, str]]:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers.raw_items()]


def theirs(raw: bytes, count: int) -> tuple[list[Message], bool]:
    """The first `count` messages h11 reads, each from a fresh connection given what the last
    left, less the CR and LF before its request line: RFC 9112 §2.2 lets a server ignore them,
    llhttp does, h11 does not. Whether h11 refused what followed them."""
    messages: list[Message] = []
    rest = raw
    while len(messages) < count and (rest := rest.lstrip(b"\r\n")):
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
        conn.receive_data(rest)
        conn.receive_data(b"")
        body, request = b"", None
        try:
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                else:
                    return messages, False
        except h11.RemoteProtocolError:
            return messages, True
        assert request is not None
        version = request.http_version.decode()
        messages.append(
            (
                request.method.decode(),
                request.target.decode("latin-1"),
                version,
                _pairs(request.headers),
                body,
                _pairs(event.headers),
            )
        )
        if conn.their_state is h11.MUST_CLOSE:
            break
        rest = conn.trailing_data[0]
    return messages, False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request(), min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_requests_read_as_h11_reads_them_in_any_chunking(
    requests: list[bytes], cuts: list[int]
) -> None:
    raw = b"".join(requests)
    mine, _ = ours(split(raw, cuts))
    expected, failed = theirs(raw, len(requests))
    assert not failed
    assert mine == expected  # both stop after a message that closes the connection


# Where llhttp is laxer than h11 (besides what `theirs` models), as RFC 9112 §3 allows, and
# harmless here because the waypoint writes every request anew: more than one SP between the
# request line's parts.
LAX = re.compile(rb"[A-Z] {2,}\S| {2,}HTTP/")
interesting = st.sampled_from(list(b'\r\n \t:;,0aA\x00\x0b\x7f\x80\xff-="/'))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(request(), min_size=1, max_size=2),
    st.lists(
        st.tuples(st.sampled_from(["ins", "del", "set"]), st.integers(0, 10_000), interesting),
        min_size=1,
        max_size=3,
    ),
)
def test_what_h1wire_accepts_h11_accepts_and_reads_the_same(
    requests: list[bytes], edits: list[tuple[str, int, int]]
) -> None:
    data = bytearray(b"".join(requests))
    for op, where, byte in edits:
        at = where % (len(data) + 1)
        if op == "ins":
            data[at:at] = bytes([byte])
        elif at < len(data):
            data[at : at + 1] = b"" if op == "del" else bytes([byte])
    raw = bytes(data)
    assume(not LAX.search(raw))
    mine, _ = ours([raw])
    expected, failed = theirs(raw, len(mine))
    assume(not any(m[0] == "CONNECT" for m in mine))
    assert mine[: len(expected)] == expected
    if failed:  # h11 refused: h1wire must not have read that message
        assert len(mine) <= len(expected)


def drain(reader: h1wire.RequestReader, chunks: list[bytes]) -> None:
    for data in chunks:
        reader.feed(data)
        while reader.next_event():
            pass


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: w\r\nX-A: 1\r\n  folded\r\n\r\n", 400),  # obs-fold (W-1)
        (b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/2.0\r\nHost: w\r\n\r\n", 505),
        (b"BREW / HTTP/1.1\r\nHost: w\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: w\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: w\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: w\r\n" + b"X-A: b\r\n" * 2100 + b"\r\n", 431),
    ],
)
def test_refused_requests_get_their_status(raw: bytes, status: int) -> None:
    chunks = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]
    with pytest.raises(ProtocolError) as refused:
        drain(h1wire.RequestReader(LIMIT), chunks)
    assert refused.value.status == status


def test_a_header_that_never_ends_is_refused_after_one_read_past_the_limit() -> None:
    """httptools keeps a header value until its end, out of our sight: the bytes fed since the
    head began bound it instead."""
    reader = h1wire.RequestReader(LIMIT)
    reader.feed(b"GET / HTTP/1.1\r\nX-A: ")
    with pytest.raises(ProtocolError) as refused:
        drain(reader, [b"a" * 1000] * 100)
    assert refused.value.status == 431


def test_endless_trailers_are_refused() -> None:
    reader = h1wire.RequestReader(LIMIT)
    reader.feed(
        b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    )
    with pytest.raises(ProtocolError):
        drain(reader, [b"a" * 1000] * 100)


def test_an_upgrade_request_is_read_as_a_plain_one_and_the_next_request_follows() -> None:
    raw = (
        b"GET /a HTTP/1.1\r\nHost: w\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nGET /b HTTP/1.1\r\nHost: w\r\n\r\n"
    )
    messages, refused = ours([raw])
    assert not refused
    assert [m[1] for m in messages] == ["/a", "/b"]


WEBSOCKET = (
    b"GET /chat HTTP/1.1\r\nHost: w\r\nConnection: Upgrade\r\nUpgrade: WebSocket/13, x\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_a_websocket_handshake_ends_http_and_keeps_what_follows() -> None:
    reader = h1wire.RequestReader(LIMIT)
    reader.feed(WEBSOCKET + b"\x81\x02hi GET / HTTP/1.1\r\n\r\n")
    head = reader.next_event()
    assert isinstance(head, Head) and head.websocket
    assert isinstance(reader.next_event(), End) and reader.next_event() is None
    assert reader.spent and reader.tail == b"\x81\x02hi GET / HTTP/1.1\r\n\r\n"
    reader.feed(b"more")
    with pytest.raises(ProtocolError):
        reader.next_event()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"GET", b"OPTIONS"),
        (
            b"HTTP/1.1\r\nHost: w\r\nConnection: Upgrade",
            b"HTTP/1.0\r\nHost: w\r\nConnection: Upgrade, keep-alive",
        ),
        (b"WebSocket/13, x", b"h2c"),
    ],
)
def test_other_upgrades_are_not_websocket_and_http_goes_on(old: bytes, new: bytes) -> None:
    reader = h1wire.RequestReader(LIMIT)
    reader.feed(WEBSOCKET.replace(old, new, 1) + b"GET /b HTTP/1.1\r\nHost: w\r\n\r\n")
    events: list[Any] = [reader.next_event() for _ in range(4)]
    assert [type(e) for e in events] == [Head, End, Head, End]
    assert not events[0].websocket and events[2].target == "/b" and not reader.spent


SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_a_101_after_a_websocket_request_ends_http_and_keeps_what_follows() -> None:
    reader = h1wire.ResponseReader(LIMIT)
    reader.expect("GET", websocket=True)
    reader.feed(SWITCHED + b"\x81\x02hi")
    head = reader.next_event()
    assert isinstance(head, Head) and head.status == 101
    assert isinstance(reader.next_event(), End) and reader.next_event() is None
    assert reader.spent and reader.tail == b"\x81\x02hi"


def test_a_101_nobody_asked_for_is_a_protocol_error() -> None:
    reader = h1wire.ResponseReader(LIMIT)
    reader.expect("GET")
    reader.feed(SWITCHED + b"\x81\x02hi")
    assert isinstance(reader.next_event(), Head) and isinstance(reader.next_event(), End)
    with pytest.raises(ProtocolError):
        reader.next_event()
    assert not reader.spent and reader.tail == b""


def response_events(raw: bytes, method: str = "GET") -> list[Any]:
    reader = h1wire.ResponseReader(LIMIT)
    reader.expect(method)
    events: list[Any] = []
    for data in (raw, b""):
        reader.feed(data)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def test_responses_framed_by_length_chunks_and_close() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab")
    assert [type(e) for e in events] == [Head, bytes, End, str]
    assert events[0].status == 200 and events[0].length == 2 and events[0].keep_alive
    events = response_events(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n"
    )
    assert events[1:3] == [b"ab", End([("x-t", "1")])]
    events = response_events(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert events[0].until_close and events[1:] == [b"abc", End()]


def test_a_head_response_ends_at_its_head_and_spends_the_reader() -> None:
    reader = h1wire.ResponseReader(LIMIT)
    reader.expect("HEAD")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 615\r\n\r\n")
    head, end = reader.next_event(), reader.next_event()
    assert isinstance(head, Head) and head.length == 615 and end == End()
    assert reader.spent
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_an_informational_response_comes_before_the_final_one() -> None:
    events = response_events(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert [e.status for e in events if isinstance(e, Head)] == [100, 204]


def test_a_response_cut_mid_body_is_an_error() -> None:
    with pytest.raises(ProtocolError):
        response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")


def test_written_heads_and_chunks_read_back_with_h11() -> None:
    raw = h1wire.request_head("POST", "/x?a=1", [("host", "w"), ("transfer-encoding", "chunked")])
    raw += h1wire.chunk(b"hello") + h1wire.last_chunk([("x-t", "1")])
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    request, data, end = conn.next_event(), conn.next_event(), conn.next_event()
    assert isinstance(request, h11.Request) and request.target == b"/x?a=1"
    assert isinstance(data, h11.Data) and data.data == b"hello"
    assert isinstance(end, h11.EndOfMessage) and end.headers.raw_items() == [(b"x-t", b"1")]


@st.composite
def response(draw: st.DrawFn) -> tuple[int, bytes, bytes]:
    """(status, head, body as framed): 1xx have none; the close ends a body with no framing."""
    status = draw(st.sampled_from([100, 103, 200, 204, 301, 304, 404, 500]))
    lines = [f"HTTP/1.1 {status} {draw(st.sampled_from(['OK', 'Whatever', '']))}".rstrip()]
    lines += [f"{draw(token)}: {draw(value)}" for _ in range(draw(st.integers(0, 3)))]
    data = b""
    if status >= 200:
        framing = draw(st.sampled_from(["length", "chunked", "close"]))
        data = draw(st.binary(max_size=40))
        if framing == "length":
            lines.append(f"Content-Length: {len(data)}")
        elif framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            data = (b"%x\r\n%s\r\n" % (len(data), data) if data else b"") + b"0\r\n\r\n"
    return status, "\r\n".join([*lines, "", ""]).encode("latin-1"), data


def h11_responses(raw: bytes, method: str) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "w")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    found, body = [], b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse | h11.Response):
            status = event.status_code
            headers = [
                (n.decode().lower(), v.decode("latin-1")) for n, v in event.headers.raw_items()
            ]
            if isinstance(event, h11.InformationalResponse):
                found.append((status, headers, b""))
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append((status, headers, body))
            return found
        else:
            pytest.fail(f"h11 read {event!r}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(response(), min_size=1, max_size=3),
    st.sampled_from(["GET", "HEAD"]),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_responses_read_as_h11_reads_them_in_any_chunking(
    responses: list[tuple[int, bytes, bytes]], method: str, cuts: list[int]
) -> None:
    """The upstream side: 1xx before the final response, length, chunks or the close ending the
    body, HEAD, 204 and 304 without one; h11 as the client that sent `method`."""
    final = next((i for i, (status, _, _) in enumerate(responses) if status >= 200), None)
    assume(final is not None)
    assert final is not None
    status, head_bytes, body_bytes = responses[final]
    bodiless = method == "HEAD" or status in (204, 304)  # a server sends no body then
    raw = b"".join(h for _, h, _ in responses[:final]) + head_bytes
    raw += b"" if bodiless else body_bytes
    reader = h1wire.ResponseReader(LIMIT)
    reader.expect(method)
    mine, body, head = [], b"", None
    for data in [*split(raw, cuts), b""]:
        reader.feed(data)
        while (event := reader.next_event()) is not None:
            if isinstance(event, Head):
                head, body = event, b""
            elif isinstance(event, bytes):
                body += event
            elif isinstance(event, End):
                assert head is not None
                mine.append((head.status, head.headers, body))
        if mine and mine[-1][0] >= 200:
            break
    assert mine == h11_responses(raw, method)
