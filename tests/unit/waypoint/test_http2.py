"""HTTP/2 (prior knowledge) through the waypoint's session, over in-memory pipes, with h2 on
both ends: streams forwarded with bodies and trailers, a denied stream answered 403 while its
neighbours go on, bad headers refused, and Rapid Reset cut off."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.unit.waypoint.test_http1 import Hooks, MemoryPipe, pipe_pair
from ztunnel.waypoint.exchange import Flow
from ztunnel.waypoint.http2 import Http2Session


async def h2_backend(pipe: MemoryPipe, seen: list[tuple[str, bytes]]) -> None:
    """Answers each stream `200` with `<path> <body length>` and a `grpc-status` trailer."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    await pipe.write(conn.data_to_send())
    bodies: dict[int, bytes] = {}
    paths: dict[int, str] = {}
    while data := await pipe.read():
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                paths[event.stream_id] = dict(event.headers or [])[b":path"].decode()
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data or b""
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                seen.append((paths[sid], bodies[sid]))
                with contextlib.suppress(  # reset meanwhile
                    h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError
                ):
                    conn.send_headers(sid, [(":status", "200")])
                    conn.send_data(sid, f"{paths[sid]} {len(bodies[sid])}".encode())
                    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        await pipe.write(conn.data_to_send())


def absorb(conn: h2.connection.H2Connection, data: bytes, results: dict[int, list[Any]]) -> bool:
    """Take the proxy's bytes as the client; True once it sent GOAWAY."""
    goaway = False
    for event in conn.receive_data(data):
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.ResponseReceived):
            results[sid] = [int(dict(event.headers or [])[b":status"]), b"", {}, False]
        elif isinstance(event, h2.events.DataReceived):
            results[sid][1] += event.data or b""
            conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.TrailersReceived):
            results[sid][2] = dict(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            results[sid][3] = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            goaway = True
    return goaway


def exchange(
    requests: list[tuple[list[tuple[str, str]], bytes]],
    rapid_resets: int = 0,
    reset_paths: list[str] | None = None,
) -> Any:
    """Send the requests on one HTTP/2 connection; return ({stream: (status, body, trailers)},
    hooks, whether the connection was closed with GOAWAY)."""

    async def main() -> Any:
        client_end, proxy_end = pipe_pair()
        hooks = Hooks()
        backend_tasks: list[asyncio.Task[None]] = []

        async def upstream() -> MemoryPipe:
            hooks.dials += 1
            ours, theirs = pipe_pair()
            backend_tasks.append(asyncio.create_task(h2_backend(theirs, hooks.seen)))  # type: ignore[arg-type]
            return ours

        hooks.upstream = upstream  # type: ignore[method-assign]
        session = Http2Session(proxy_end, Flow("10.0.0.1", "td/ns/a/sa/b", "10.96.0.5", 80), hooks)
        task = asyncio.create_task(session.run(b""))
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        for i in range(rapid_resets):
            sid = conn.get_next_available_stream_id()
            path = reset_paths[i] if reset_paths else "/api/x"
            conn.send_headers(sid, get(path), end_stream=True)
            conn.reset_stream(sid)
        for headers, body in requests:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=not body)
            if body:
                conn.send_data(sid, body, end_stream=True)
        await client_end.write(conn.data_to_send())
        results: dict[int, list[Any]] = {}
        goaway = False
        want = len(requests)
        try:
            async with asyncio.timeout(5):
                while len([r for r in results.values() if r[3]]) < want and not goaway:
                    data = await client_end.read()
                    if not data:
                        break
                    goaway = absorb(conn, data, results)
                    await client_end.write(conn.data_to_send())
        finally:
            client_end.end()
            await asyncio.wait_for(task, 5)
            for t in backend_tasks:
                t.cancel()
        return {k: tuple(v[:3]) for k, v in results.items()}, hooks, goaway

    return asyncio.run(main())


def get(path: str, method: str = "GET", **extra: str) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", "web"),
        *extra.items(),
    ]


def test_streams_are_forwarded_with_bodies_and_trailers() -> None:
    results, hooks, _ = exchange([(get("/api/a"), b""), (get("/api/b", "POST"), b"hello")])
    assert results[1] == (200, b"/api/a 0", {b"grpc-status": b"0"})
    assert results[3] == (200, b"/api/b 5", {b"grpc-status": b"0"})
    assert sorted(hooks.seen) == [("/api/a", b""), ("/api/b", b"hello")]
    assert hooks.dials == 1, "one upstream connection carries every stream"
    assert sorted(r.status for r in hooks.records) == [200, 200]


def test_a_denied_stream_gets_403_and_its_neighbours_go_on() -> None:
    results, hooks, _ = exchange([(get("/admin"), b""), (get("/api/ok"), b"")])
    assert results[1][:2] == (403, b"RBAC: access denied")
    assert results[3][:2] == (200, b"/api/ok 0")
    assert hooks.seen == [("/api/ok", b"")]


def test_bad_headers_and_paths_are_refused_before_policy() -> None:
    results, hooks, _ = exchange(
        [(get("/api/x", x_user="admin"), b""), (get("/api/../admin"), b""), (get("*"), b"")]
    )
    assert [results[s][0] for s in (1, 3, 5)] == [400, 403, 400]
    assert hooks.seen == []


def test_rapid_reset_closes_the_connection() -> None:
    """H-8: opening and resetting streams faster than MAX_RESETS per window ends with GOAWAY,
    and no reset stream costs an upstream request."""
    _, hooks, goaway = exchange([(get("/api/x"), b"")], rapid_resets=300)
    assert goaway
    assert hooks.seen == []


def test_a_stream_reset_before_its_answer_leaves_the_others_working() -> None:
    """The client resets denied and allowed streams at once (their RST_STREAM arrives with
    their HEADERS): answering a stream already reset is not a connection error."""
    results, _, goaway = exchange(
        [(get("/api/after"), b"")], rapid_resets=3, reset_paths=["/admin", "/api/x", "/admin"]
    )
    assert not goaway
    assert results[7][:2] == (200, b"/api/after 0")
