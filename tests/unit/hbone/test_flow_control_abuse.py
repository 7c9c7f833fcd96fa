"""Flow-control abuse (RELIABILITY H-10), sans-IO with frames written by hand: a WINDOW_UPDATE
that takes a window past 2^31-1 and DATA beyond the window we advertised are FLOW_CONTROL_ERROR
(RFC 9113 §6.9.1, §6.9), for the connection or for the stream alone, and counted by name. The
stalled-window half of H-10 is in test_timeouts.py; bounded buffering in test_backpressure.py."""

from __future__ import annotations

import hyperframe.frame
from h2.errors import ErrorCodes

from tests.unit.hbone.test_protocol import Clock
from tests.unit.hbone.test_timeouts import SHORT, frames, goaway_code, raw_client, server_with
from ztunnel.hbone import protocol as p

MAX_WINDOW = 2**31 - 1


def connect(stream_id: int = 1) -> tuple[p.HboneProtocol, list[p.Event]]:
    """A server with one accepted CONNECT stream (and the raw client's bytes that made it)."""
    client = raw_client()
    client.send_headers(
        stream_id, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")], end_stream=False
    )
    server = server_with(Clock())
    events = server.receive(client.data_to_send())
    server.respond(stream_id, 200)
    server.data_to_send()
    return server, events


def frame(f: hyperframe.frame.Frame) -> bytes:
    return bytes(f.serialize())


def test_a_connection_window_update_past_2_31_is_a_connection_flow_control_error() -> None:
    server, _ = connect()
    events = server.receive(frame(hyperframe.frame.WindowUpdateFrame(0, MAX_WINDOW)))
    closed = [e for e in events if isinstance(e, p.Closed)]
    assert closed and closed[0].remote
    assert closed[0].error_code == ErrorCodes.FLOW_CONTROL_ERROR
    assert closed[0].fault == "h2_flow_control_error"
    assert goaway_code(server.data_to_send()) == ErrorCodes.FLOW_CONTROL_ERROR


def test_a_stream_window_update_past_2_31_resets_that_stream_alone() -> None:
    server, _ = connect()
    events = server.receive(frame(hyperframe.frame.WindowUpdateFrame(1, MAX_WINDOW)))
    assert not any(isinstance(e, p.Closed) for e in events)
    resets = [
        f for f in frames(server.data_to_send()) if isinstance(f, hyperframe.frame.RstStreamFrame)
    ]
    assert [(f.stream_id, f.error_code) for f in resets] == [(1, ErrorCodes.FLOW_CONTROL_ERROR)]
    assert server.accepting_streams


def test_data_beyond_the_advertised_window_is_a_flow_control_error() -> None:
    server, _ = connect()
    data = hyperframe.frame.DataFrame(1)
    data.data = b"x" * 16384
    burst = frame(data) * (SHORT.stream_window // 16384 + 2)  # past the 64 KiB windows
    events = server.receive(burst)
    closed = [e for e in events if isinstance(e, p.Closed)]
    assert closed and closed[0].error_code == ErrorCodes.FLOW_CONTROL_ERROR
    assert closed[0].fault == "h2_flow_control_error"
    assert goaway_code(server.data_to_send()) == ErrorCodes.FLOW_CONTROL_ERROR
