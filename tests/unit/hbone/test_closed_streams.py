"""A long-lived pooled HBONE connection must not grow with the streams it has carried: h2
remembers closed streams (to tell a late frame on a reset stream from a protocol error), by
default 65 536 of them, ~100 B each per side. That was the soak's ztunnel RSS growth
(+12 MiB/h). A memory budget, sans-IO, and the late-frame rule the memory is kept for."""

from __future__ import annotations

import gc
import tracemalloc

import hyperframe.frame

from tests.unit.hbone.test_graceful_goaway import opened
from tests.unit.hbone.test_protocol import pair, pump
from ztunnel.hbone import h2conn
from ztunnel.hbone import protocol as p

WARM_UP = 2048  # past the bound (1024): the closed-stream dicts are full
MEASURED = 4000
BUDGET_BYTES = 64 * 1024  # unbounded, the 4000 streams cost ~800 KiB on the two sides


def one_stream(client: p.HboneProtocol, server: p.HboneProtocol) -> None:
    sid = client.open("10.0.0.1:80")
    pump(client, server)
    server.respond(sid, 200)
    client.send(sid, b"ping")
    client.end(sid)
    server.end(sid)
    pump(client, server)


def test_closed_streams_do_not_grow_a_pooled_connection_soak_rss_regression() -> None:
    client, server, _ = pair()
    tracemalloc.start()  # before the warm-up, so what it kept and later frees is counted
    try:
        for _ in range(WARM_UP):
            one_stream(client, server)
        gc.collect()
        before = tracemalloc.take_snapshot()
        for _ in range(MEASURED):
            one_stream(client, server)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < BUDGET_BYTES, f"{MEASURED} closed streams kept {grown} B"
    assert client.closed is None and server.closed is None


def test_data_in_flight_after_our_reset_is_a_stream_matter_even_once_h2_forgot_it() -> None:
    """What makes the low bound safe: our DATA path answers a frame on any stream below the
    highest id with RST_STREAM(STREAM_CLOSED), remembered or not, and the connection lives."""
    client, server, _ = pair()
    sid = opened(client, server)
    server.reset(sid)
    server.data_to_send()  # the RST_STREAM is still on its way when the client's DATA arrives
    for _ in range(h2conn.H2Connection.MAX_CLOSED_STREAMS + 10):  # h2 forgets the reset one
        one_stream(client, server)
    late = hyperframe.frame.DataFrame(sid, b"late")
    server.receive(bytes(late.serialize()))
    assert server.closed is None
    one_stream(client, server)  # the connection still carries new streams
