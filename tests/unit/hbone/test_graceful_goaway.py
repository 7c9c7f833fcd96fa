"""Graceful GOAWAY (RFC 9113 §6.8; RELIABILITY F-4(b)), sans-IO: a draining server's GOAWAY
with NO_ERROR names the last stream it accepted; that stream goes on both ways to its end, the
client opens no new stream on the connection, a stream the client opened meanwhile comes back
REFUSED_STREAM (not processed: retried elsewhere), and one the server sees after its GOAWAY is
refused. A GOAWAY with an error code still ends the connection (h2's rule, kept)."""

from __future__ import annotations

import hyperframe.frame
from h2.errors import ErrorCodes

from tests.unit.hbone.test_protocol import pair, pump
from ztunnel.hbone import protocol as p


def opened(client: p.HboneProtocol, server: p.HboneProtocol) -> int:
    sid = client.open("10.0.0.1:80")
    pump(client, server)
    server.respond(sid, 200)
    pump(client, server)
    return sid


def goaway(error_code: int, last_stream_id: int) -> bytes:
    frame = hyperframe.frame.GoAwayFrame(0)
    frame.error_code, frame.last_stream_id = error_code, last_stream_id
    return bytes(frame.serialize())


def test_the_accepted_stream_goes_on_to_its_end_after_a_graceful_goaway() -> None:
    client, server, _ = pair()
    sid = opened(client, server)
    server.graceful_goaway()
    at_client, _ = pump(client, server)
    assert at_client == [p.GoingAway(sid)]
    assert not client.accepting_streams and client.going_away and client.closed is None
    assert client.send(sid, b"ping") == 4
    server.send(sid, b"pong")
    at_client, at_server = pump(client, server)
    assert [e.data for e in at_server if isinstance(e, p.Data)] == [b"ping"]
    assert [e.data for e in at_client if isinstance(e, p.Data)] == [b"pong"]
    client.end(sid)
    server.end(sid)
    at_client, at_server = pump(client, server)
    assert p.EndOfStream(sid) in at_client and p.EndOfStream(sid) in at_server
    assert client.closed is None and server.closed is None


def test_a_stream_opened_before_the_goaway_arrived_is_refused_for_a_retry() -> None:
    client, server, _ = pair()
    sid = opened(client, server)
    server.graceful_goaway()
    late = client.open("10.0.0.1:80")  # crosses the GOAWAY on the wire
    at_client, at_server = pump(client, server)
    assert not any(isinstance(e, p.ConnectRequest) for e in at_server), "served after GOAWAY"
    resets = [e for e in at_client if isinstance(e, p.Reset)]
    assert resets and all(e.stream_id == late for e in resets)
    assert resets[0].error_code == ErrorCodes.REFUSED_STREAM
    assert client.closed is None and client.send(sid, b"still") == 5


def test_the_last_stream_id_only_goes_down() -> None:
    client, server, _ = pair()
    sid = opened(client, server)
    client.receive(goaway(ErrorCodes.NO_ERROR, 2**31 - 1))  # hyper's first, "soon"
    assert client.receive(goaway(ErrorCodes.NO_ERROR, 0)) == [
        p.GoingAway(0),
        p.Reset(sid, ErrorCodes.REFUSED_STREAM, remote=True),
    ]
    assert client.receive(goaway(ErrorCodes.NO_ERROR, 2**31 - 1)) == [p.GoingAway(0)]


def test_a_goaway_with_an_error_code_ends_the_connection() -> None:
    client, server, _ = pair()
    opened(client, server)
    (closed,) = client.receive(goaway(ErrorCodes.PROTOCOL_ERROR, 1))
    assert isinstance(closed, p.Closed) and closed.remote
    assert closed.error_code == ErrorCodes.PROTOCOL_ERROR
