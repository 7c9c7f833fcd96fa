"""HBONE sans-IO: two protocol instances wired to each other in memory (RELIABILITY H-1…H-11)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame
import pytest
from h2.errors import ErrorCodes

from ztunnel.hbone import protocol as p


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


DEFAULT = p.Limits()


def pair(limits: p.Limits = DEFAULT) -> tuple[p.HboneProtocol, p.HboneProtocol, Clock]:
    clock = Clock()
    client = p.HboneProtocol(client=True, limits=limits, clock=clock)
    server = p.HboneProtocol(client=False, limits=limits, clock=clock)
    client.start()
    server.start()
    pump(client, server)
    return client, server, clock


def pump(a: p.HboneProtocol, b: p.HboneProtocol) -> tuple[list[p.Event], list[p.Event]]:
    """Move bytes both ways until quiet; return (events at a, events at b)."""
    at_a: list[p.Event] = []
    at_b: list[p.Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_b and not to_a:
            return at_a, at_b
        if to_b:
            at_b += b.receive(to_b)
        if to_a:
            at_a += a.receive(to_a)


def test_connect_tunnel_both_ways_with_half_close() -> None:
    client, server, _ = pair()
    sid = client.open("10.244.2.3:8080", {"forwarded": 'for="10.244.1.3:5000"'})
    _, at_server = pump(client, server)
    (request,) = at_server
    assert isinstance(request, p.ConnectRequest)
    assert request.authority == "10.244.2.3:8080"
    assert request.headers["forwarded"] == 'for="10.244.1.3:5000"'
    server.respond(sid, 200)
    at_client, _ = pump(client, server)
    assert p.Response(sid, 200) in at_client
    assert client.send(sid, b"ping") == 4
    client.end(sid)
    _, at_server = pump(client, server)
    data = [e for e in at_server if isinstance(e, p.Data)]
    assert data == [p.Data(sid, b"ping", 4)]
    assert p.EndOfStream(sid) in at_server
    server.ack(sid, 4)
    assert server.send(sid, b"pong") == 4
    server.end(sid)
    at_client, _ = pump(client, server)
    assert p.Data(sid, b"pong", 4) in at_client
    assert p.EndOfStream(sid) in at_client


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "GET"), (":authority", "10.0.0.1:80"), (":scheme", "https"), (":path", "/")],
        [(":method", "CONNECT"), (":authority", "backend:80")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1:http")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1:0")],
        [(":method", "CONNECT"), (":authority", "::1:80")],
    ],
)
def test_bad_requests_get_400_and_the_connection_goes_on(headers: list[tuple[str, str]]) -> None:
    """H-1, H-2: non-CONNECT methods and unusable authorities are refused per stream."""
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    server = p.HboneProtocol(client=False, clock=Clock())
    server.start()
    events = server.receive(raw.data_to_send())
    raw.receive_data(server.data_to_send())
    raw.send_headers(1, headers, end_stream=headers[0][1] == "GET")
    events = server.receive(raw.data_to_send())
    assert not [e for e in events if isinstance(e, p.ConnectRequest | p.Closed)]
    replies = raw.receive_data(server.data_to_send())
    statuses = [
        dict(e.headers)[b":status"] for e in replies if isinstance(e, h2.events.ResponseReceived)
    ]
    assert statuses == [b"400"]
    raw.send_headers(3, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    (ok,) = server.receive(raw.data_to_send())
    assert ok == p.ConnectRequest(
        3, "10.0.0.1:80", {":method": "CONNECT", ":authority": "10.0.0.1:80"}
    )


def test_ipv6_authority_is_normalized() -> None:
    assert p.parse_authority("[::1]:80") == ("::1", 80)
    assert p.format_authority("::1", 80) == "[::1]:80"


def test_connect_with_path_is_a_protocol_error() -> None:
    """H-2: h2 refuses CONNECT with :path (stricter than a stream error: GOAWAY)."""
    raw = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    raw.initiate_connection()
    server = p.HboneProtocol(client=False, clock=Clock())
    server.start()
    server.receive(raw.data_to_send())
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":path", "/")])
    events = server.receive(raw.data_to_send())
    assert isinstance(events[-1], p.Closed)
    assert events[-1].remote


def test_rapid_reset_gets_enhance_your_calm() -> None:
    """H-8: the layer above h2 bounds peer resets: the reset past the limit, not one before,
    closes the connection with GOAWAY(ENHANCE_YOUR_CALM), named for the metric, and the
    client hears the GOAWAY."""
    client, server, _ = pair(p.Limits(max_resets=10, reset_window_s=1.0))
    for i in range(11):
        sid = client.open("10.0.0.1:80")
        client.reset(sid)
        heard, got = pump(client, server)
        closed = [e for e in got if isinstance(e, p.Closed)]
        assert bool(closed) == (i == 10), f"reset {i + 1}: closed {closed}"
    assert closed[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert closed[0].fault == "h2_rapid_reset"
    goaway = [e for e in heard if isinstance(e, p.Closed)]
    assert goaway and goaway[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM, heard
    assert not goaway[0].fault, "the client did nothing wrong"


def test_resets_spread_over_time_are_fine() -> None:
    client, server, clock = pair(p.Limits(max_resets=10, reset_window_s=1.0))
    for _ in range(30):
        clock.now += 0.2
        sid = client.open("10.0.0.1:80")
        client.reset(sid)
        _, got = pump(client, server)
        assert not [e for e in got if isinstance(e, p.Closed)]


def test_ping_flood_against_a_peer_that_does_not_read() -> None:
    """H-9: acks pile up while our output never drains → ENHANCE_YOUR_CALM."""
    client, server, _ = pair(p.Limits(max_pending_control=50))
    for i in range(51):
        client.ping(i.to_bytes(8, "big"))
    events = server.receive(client.data_to_send())  # server output is never read
    assert isinstance(events[-1], p.Closed)
    assert events[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_pings_are_fine_while_the_peer_reads() -> None:
    client, server, _ = pair(p.Limits(max_pending_control=50))
    for i in range(200):
        client.ping(i.to_bytes(8, "big"))
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
        server.peer_read_progress()
    assert server.closed is None


def test_flow_control_bounds_what_send_takes() -> None:
    """H-10: a peer that never acks cannot be sent more than its window."""
    limits = p.Limits(stream_window=65535, connection_window=65535)
    client, server, _ = pair(limits)
    sid = client.open("10.0.0.1:80")
    pump(client, server)
    server.respond(sid, 200)
    pump(client, server)
    taken = client.send(sid, b"x" * 200_000)
    assert taken == 65535
    assert client.send(sid, b"more") == 0
    _, got = pump(client, server)
    received = sum(len(e.data) for e in got if isinstance(e, p.Data))
    server.ack(sid, received)
    at_client, _ = pump(client, server)
    assert any(isinstance(e, p.WindowOpened) for e in at_client)
    assert client.send(sid, b"more") == 4


def test_excess_streams_are_refused_by_the_client_side() -> None:
    """H-7/L-2: the pool must not open more streams than the server allows."""
    client, server, _ = pair(p.Limits(max_concurrent_streams=2))
    for _ in range(2):
        client.open("10.0.0.1:80")
    pump(client, server)
    assert not client.accepting_streams


def test_garbage_after_the_preface_is_a_remote_protocol_error() -> None:
    """H-11/H-12: never an exception out of receive."""
    server = p.HboneProtocol(client=False, clock=Clock())
    server.start()
    events = server.receive(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x09" * 50)
    assert isinstance(events[-1], p.Closed)
    assert server.receive(b"more") == []


def test_data_frame_repr_does_not_scale_with_the_payload() -> None:
    """h2 formats repr(frame) for every received frame; hyperframe's DATA repr hex-encoded the
    whole payload (PERF.md: the largest single cost of the data path)."""
    frame = hyperframe.frame.DataFrame(1, b"x" * (1 << 20))
    assert "1048576 bytes" in repr(frame)
    assert len(repr(frame)) < 200


def test_a_stream_beyond_the_limit_is_refused_alone() -> None:
    """H-7: the excess stream gets REFUSED_STREAM; streams already open are unaffected and the
    connection takes new streams once there is room (h2 alone would close the connection)."""
    limits = p.Limits(max_concurrent_streams=2)
    server = p.HboneProtocol(client=False, limits=limits, clock=Clock())
    server.start()
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    server.receive(raw.data_to_send())
    raw.receive_data(server.data_to_send())  # our SETTINGS reach the client, which ACKs them
    server.receive(raw.data_to_send())  # from now on the limit is in force
    # A misbehaving client that ignores the limit it was told:
    raw.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
    raw.remote_settings.acknowledge()
    for sid in (1, 3, 5):
        raw.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    events = server.receive(raw.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, p.ConnectRequest)] == [1, 3]
    assert not [e for e in events if isinstance(e, p.Closed)]
    replies = raw.receive_data(server.data_to_send())
    resets = [(e.stream_id, e.error_code) for e in replies if isinstance(e, h2.events.StreamReset)]
    assert resets == [(5, ErrorCodes.REFUSED_STREAM)]
    server.respond(1, 200, end=True)
    raw.receive_data(server.data_to_send())
    raw.end_stream(1)
    server.receive(raw.data_to_send())
    raw.send_headers(7, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    again = server.receive(raw.data_to_send())
    assert [e.stream_id for e in again if isinstance(e, p.ConnectRequest)] == [7]


def test_fast_data_path_is_read_by_plain_h2_as_ordinary_data_frames() -> None:
    """The DATA fast path (`send_available`) against h2 itself as the peer: the same bytes, in
    order with control frames, and the same window accounting as h2's own `send_data`."""
    client = p.HboneProtocol(client=True, clock=Clock())
    client.start()
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    peer.initiate_connection()
    peer.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    peer.increment_flow_control_window(16 << 20)

    def exchange() -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        for _ in range(50):
            out, back = client.data_to_send(), peer.data_to_send()
            if not out and not back:
                break
            if out:
                events += peer.receive_data(out)
            if back:
                client.receive(back)
        return events

    exchange()
    sid = client.open("10.0.0.1:80")
    exchange()
    peer.send_headers(sid, [(":status", "200")])
    exchange()
    payload = bytes(range(256)) * 12_000  # ~3 MiB: several frames, a partial window
    before = client.window(sid)
    taken = client.send(sid, payload)
    assert taken == min(len(payload), before)
    assert client.window(sid) == before - taken, "h2's window must account for fast-path data"
    client.ping(b"12345678")  # a control frame queued behind the data
    small = client.send(sid, bytearray(b"tail"))  # a bytearray takes the copying path
    events = exchange()
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == payload[:taken] + b"tail"[:small]
    ping = next(i for i, e in enumerate(events) if isinstance(e, h2.events.PingReceived))
    after = b"".join(e.data for e in events[ping:] if isinstance(e, h2.events.DataReceived))
    assert after == b"tail"[:small], "the PING must keep its place between the two sends"
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)


def test_fast_data_path_on_a_closed_stream_takes_nothing() -> None:
    client, server, _ = pair()
    sid = client.open("10.0.0.1:80")
    pump(client, server)
    server.respond(sid, 200)
    pump(client, server)
    client.reset(sid)
    assert client.send(sid, b"late") == 0
    pump(client, server)


def open_stream(client: p.HboneProtocol, server: p.HboneProtocol) -> int:
    sid = client.open("10.0.0.1:80")
    pump(client, server)
    server.respond(sid, 200)
    pump(client, server)
    return sid


def deliver(client: p.HboneProtocol, server: p.HboneProtocol, sid: int, size: int) -> int:
    """`size` bytes in 1 KiB messages, each acknowledged by the server as it arrives (as a
    tunnel does); returns how many the client's windows let through."""
    sent = 0
    while sent < size:
        taken = client.send(sid, b"m" * min(1024, size - sent))
        if not taken:
            return sent
        sent += taken
        for event in server.receive(client.data_to_send()):
            if isinstance(event, p.Data):
                server.ack(event.stream_id, event.flow_controlled_length)
        client.receive(server.data_to_send())
    return sent


@pytest.mark.parametrize("window", [16 * 1024, 64 * 1024, p.STREAM_WINDOW])
def test_small_messages_with_batched_acks_never_stall_the_sender(window: int) -> None:
    limits = p.Limits(stream_window=window, connection_window=max(window, 65_535))
    client, server, _ = pair(limits)
    sid = open_stream(client, server)
    assert deliver(client, server, sid, 3 * window + 5000) == 3 * window + 5000


def test_acks_held_for_a_stream_are_returned_when_its_peer_stops_sending() -> None:
    """Every consumed byte reaches h2's books once the peer stops sending on a stream: a
    regression guard for acks held back in batches (a stream that ends, or is reset, with
    less than a batch owed would shrink the connection window for good)."""
    client, server, _ = pair()
    acked: list[int] = []
    forward = server.h2.acknowledge_received_data

    def spy(size: int, stream_id: int) -> None:
        acked.append(size)
        forward(size, stream_id)

    server.h2.acknowledge_received_data = spy  # type: ignore[method-assign,assignment]
    for round_, ending in enumerate(("end", "reset", "end"), start=1):
        sid = open_stream(client, server)
        assert deliver(client, server, sid, 5000) == 5000
        assert sum(acked) == (round_ - 1) * 5000, "under a batch: held"
        if ending == "end":
            client.end(sid)
        else:
            server.reset(sid)
        pump(client, server)
        assert sum(acked) == round_ * 5000


def test_an_ack_of_data_that_carried_end_stream_goes_to_h2_at_once() -> None:
    """A peer may end a stream on its last DATA frame (h2 does): the stream's EndOfStream is
    read before that data is consumed, and its ack must not be held for a batch that never
    comes."""
    server = p.HboneProtocol(client=False, clock=Clock())
    server.start()
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    server.receive(raw.data_to_send())
    raw.receive_data(server.data_to_send())
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    server.receive(raw.data_to_send())
    server.respond(1, 200)
    raw.receive_data(server.data_to_send())
    raw.send_data(1, b"last words", end_stream=True)
    events = server.receive(raw.data_to_send())
    assert [type(e) for e in events] == [p.Data, p.EndOfStream]
    acked: list[int] = []
    server.h2.acknowledge_received_data = lambda size, sid: acked.append(size)  # type: ignore[method-assign,assignment]
    server.ack(1, events[0].flow_controlled_length)  # type: ignore[union-attr]
    assert acked == [len(b"last words")]
