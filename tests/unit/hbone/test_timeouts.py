"""HBONE's timeouts, sans-IO with a fake clock (RELIABILITY C-2, H-10): a server connection whose
first request or a header block never completes gets GOAWAY within the header timeout; a stream
whose peer lets nothing through its window for the stall timeout is reset, and any progress
restarts that clock. The edge's timer calls `expire`; these tests call it as the timer would."""

from __future__ import annotations

import h2.config
import h2.connection
import hyperframe.frame
from h2.errors import ErrorCodes

from tests.unit.hbone.test_protocol import Clock, pair, pump
from ztunnel.hbone import protocol as p

SHORT = p.Limits(
    header_timeout_s=2.0, stall_timeout_s=5.0, stream_window=65535, connection_window=65535
)


def raw_client() -> h2.connection.H2Connection:
    """A peer whose frames the test writes by hand."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def server_with(clock: Clock) -> p.HboneProtocol:
    server = p.HboneProtocol(client=False, limits=SHORT, clock=clock)
    server.start()
    return server


def goaway_code(data: bytes) -> int | None:
    codes = [f.error_code for f in frames(data) if isinstance(f, hyperframe.frame.GoAwayFrame)]
    return codes[-1] if codes else None


def frames(data: bytes) -> list[hyperframe.frame.Frame]:
    out = []
    while len(data) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def test_a_connection_that_never_sends_a_request_gets_goaway_after_the_header_timeout() -> None:
    clock = Clock()
    server = server_with(clock)
    server.receive(raw_client().data_to_send())  # preface and SETTINGS, then nothing
    server.data_to_send()
    clock.now = 1.9
    assert server.expire(clock.now) == []
    clock.now = 2.1
    (closed,) = server.expire(clock.now)
    assert isinstance(closed, p.Closed)
    assert closed.fault == "h2_header_timeout"
    assert closed.remote
    assert goaway_code(server.data_to_send()) == ErrorCodes.NO_ERROR
    assert server.expire(clock.now + 10) == []  # once


def test_a_header_block_left_open_gets_goaway_after_the_header_timeout() -> None:
    """A first request completes; a second HEADERS without END_HEADERS never gets its
    CONTINUATION (the connection cannot carry another frame until it does)."""
    clock = Clock()
    server = server_with(clock)
    peer = raw_client()
    peer.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    events = server.receive(peer.data_to_send())
    assert any(isinstance(e, p.ConnectRequest) for e in events)
    clock.now = 5.0  # well past the header timeout: a served connection is not timed out
    assert server.expire(clock.now) == []
    open_block = hyperframe.frame.HeadersFrame(3)
    open_block.data = b"\x82"  # one indexed field; no END_HEADERS flag
    server.receive(open_block.serialize())
    clock.now = 6.9
    assert server.expire(clock.now) == []
    clock.now = 7.1
    (closed,) = server.expire(clock.now)
    assert isinstance(closed, p.Closed) and closed.fault == "h2_header_timeout"
    assert "header block" in closed.reason


def test_a_header_block_finished_in_time_is_not_timed_out() -> None:
    clock = Clock()
    server = server_with(clock)
    peer = raw_client()
    peer.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    server.receive(peer.data_to_send())
    start = hyperframe.frame.HeadersFrame(3)
    start.data = b"\x82"
    server.receive(start.serialize())
    clock.now = 1.5
    end = hyperframe.frame.ContinuationFrame(3)
    end.flags.add("END_HEADERS")
    server.receive(end.serialize())
    clock.now = 60.0
    assert server.expire(clock.now) == []


def test_the_client_side_has_no_header_timeout() -> None:
    client, _, clock = pair(SHORT)
    clock.now = 60.0
    assert client.expire(clock.now) == []


def stalled_stream() -> tuple[p.HboneProtocol, p.HboneProtocol, Clock, int]:
    """The server has sent a full window on a stream the client never acks."""
    client, server, clock = pair(SHORT)
    sid = client.open("10.0.0.1:80")
    pump(client, server)
    server.respond(sid, 200)
    pump(client, server)
    assert server.send(sid, b"x" * 100_000) == 65535
    pump(client, server)
    return client, server, clock, sid


def test_a_stream_stalled_on_a_closed_window_is_reset_after_the_stall_timeout() -> None:
    client, server, clock, sid = stalled_stream()
    clock.now = 4.9
    assert server.send(sid, b"x") == 0
    assert server.expire(clock.now) == []
    clock.now = 5.1
    assert server.expire(clock.now) == [p.Reset(sid, ErrorCodes.CANCEL, remote=False)]
    at_client, _ = pump(client, server)
    assert p.Reset(sid, ErrorCodes.CANCEL, remote=True) in at_client
    assert server.expire(clock.now + 100) == []  # once
    assert server.closed is None  # the connection and its other streams go on


def test_progress_through_the_window_restarts_the_stall_clock() -> None:
    client, server, clock, sid = stalled_stream()
    clock.now = 4.0
    client.ack(sid, 65535)  # the reader read it all: the window opens
    pump(client, server)
    assert server.send(sid, b"x" * 100_000) == 65535  # progress, then blocked again
    clock.now = 8.0  # 8 s since the first block, 4 s since the progress
    assert server.expire(clock.now) == []
    clock.now = 9.1
    assert [e.stream_id for e in server.expire(clock.now) if isinstance(e, p.Reset)] == [sid]


def test_a_stream_that_sent_everything_is_not_stalled() -> None:
    client, server, clock, sid = stalled_stream()
    client.ack(sid, 65535)
    pump(client, server)
    assert server.send(sid, b"tail") == 4  # all of it: no longer waiting on the window
    clock.now = 60.0
    assert server.expire(clock.now) == []


def test_a_stalled_stream_reset_by_its_peer_is_forgotten() -> None:
    client, server, clock, sid = stalled_stream()
    client.reset(sid)
    pump(client, server)
    clock.now = 60.0
    assert server.expire(clock.now) == []
