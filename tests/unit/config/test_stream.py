"""The config stream's sans-IO wire: gRPC-style length-prefixed JSON on one HTTP/2 stream."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from common.stream import PREFIX, MessageChannel


def pump(client: MessageChannel, server: MessageChannel) -> tuple[list[Any], list[Any]]:
    """Move bytes both ways until quiet; the messages each side received."""
    to_client: list[Any] = []
    to_server: list[Any] = []
    for _ in range(10_000):
        a, b = client.data_to_send(), server.data_to_send()
        if not a and not b:
            return to_client, to_server
        if a:
            to_server += server.receive(a)
        if b:
            to_client += client.receive(b)
    raise AssertionError("the channels never went quiet")


def opened(status: int = 200) -> tuple[MessageChannel, MessageChannel]:
    client, server = MessageChannel(client_side=True), MessageChannel(client_side=False)
    client.open("/v1/config/stream", {"authorization": "Bearer t"})
    pump(client, server)
    assert server.request_headers[":path"] == "/v1/config/stream"
    assert server.request_headers["authorization"] == "Bearer t"
    server.respond(status)
    pump(client, server)
    assert client.response_status == status
    return client, server


def test_messages_flow_both_ways_in_order() -> None:
    client, server = opened()
    server.send({"type": "update", "n": 1})
    server.send({"type": "update", "n": 2})
    client.send({"type": "ack", "n": 1})
    to_client, to_server = pump(client, server)
    assert [m["n"] for m in to_client] == [1, 2]
    assert to_server == [{"type": "ack", "n": 1}]


def test_a_message_larger_than_the_flow_control_window_arrives_whole() -> None:
    client, server = opened()
    big = {"type": "update", "blob": "x" * (40 * 1024 * 1024)}  # > the 16 MiB windows
    server.send(big)
    assert server.pending > 0, "sent past the peer's window"
    to_client, _ = pump(client, server)
    assert to_client == [big]
    assert server.pending == 0


def test_oversized_length_prefix_closes_before_buffering() -> None:
    client, server = (
        MessageChannel(client_side=True, max_message=1024),
        MessageChannel(client_side=False),
    )
    client.open("/p", {})
    pump(client, server)
    server.respond(200)
    pump(client, server)
    sid = server.stream_id
    assert sid is not None
    server.conn.send_data(sid, PREFIX.pack(0, 1025) + b"{")
    pump(client, server)
    assert client.closed
    assert "1025 bytes" in client.close_reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"not json", "not JSON"), (b"[1, 2]", "not a JSON object")],
)
def test_malformed_message_closes_the_stream(payload: bytes, reason: str) -> None:
    client, server = opened()
    sid = server.stream_id
    assert sid is not None
    server.conn.send_data(sid, PREFIX.pack(0, len(payload)) + payload)
    pump(client, server)
    assert client.closed
    assert reason in client.close_reason


def test_refusal_status_ends_the_stream() -> None:
    client, server = opened(401)
    assert server.closed
    assert client.closed


def test_a_second_stream_is_refused() -> None:
    server = MessageChannel(client_side=False)
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    request = [(":method", "POST"), (":scheme", "https"), (":path", "/p"), (":authority", "c")]
    raw.send_headers(1, request)
    raw.send_headers(3, request)  # sent before the server's MAX_CONCURRENT_STREAMS arrives
    server.receive(raw.data_to_send())
    assert server.stream_id == 1
    events = raw.receive_data(server.data_to_send())
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (3, h2.errors.ErrorCodes.REFUSED_STREAM)
    ]
