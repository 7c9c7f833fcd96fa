"""HboneConnection's timers (RELIABILITY C-2, C-5), with ztunnel's intervals shortened: a peer
that answers PINGs keeps a quiet connection with a stream open; a peer that vanished (nothing
arrives any more, not even PING acks, as when its netns is deleted) is detected after
interval + timeout, the connection aborted and every stream on it reset, so nothing leaks; a
connection with no stream is closed with GOAWAY after the idle timeout. Two connections joined
by in-memory transports that really carry the HTTP/2 bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ztunnel.hbone import connection
from ztunnel.hbone import protocol as p
from ztunnel.hbone.connection import DEFAULT_LIMITS, HboneConnection


class Wire:
    """One direction's transport: what is written reaches the peer's data_received, unless
    the wire is cut."""

    def __init__(self) -> None:
        self.peer: HboneConnection | None = None
        self.cut = False
        self.closing = False
        self.aborted = False
        self.sent: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.9", 15008) if name == "peername" else default

    def writelines(self, buffers: list[bytes]) -> None:
        data = b"".join(buffers)
        self.sent.append(data)
        if not self.cut and self.peer is not None:
            asyncio.get_running_loop().call_soon(self.peer.data_received, data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True


class Handler:
    def __init__(self) -> None:
        self.resets: list[int] = []

    def on_response(self, status: int) -> None: ...
    def on_data(self, data: bytes | bytearray, flow_controlled_length: int) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, error_code: int) -> None:
        self.resets.append(error_code)

    def on_writable(self) -> None: ...
    def on_write_paused(self) -> None: ...


@pytest.fixture(autouse=True)
def short_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PING_INTERVAL_S", 0.05)
    monkeypatch.setattr(connection, "PING_TIMEOUT_S", 0.1)


async def pair(
    idle_timeout_s: float = 300.0,
    limits: p.Limits = DEFAULT_LIMITS,
    faults: list[str] | None = None,
) -> tuple[HboneConnection, HboneConnection, Wire]:
    """(client, server, the client's outgoing wire). The server's faults go to `faults`."""
    client = HboneConnection(client=True, idle_timeout_s=idle_timeout_s, limits=limits)
    server = HboneConnection(
        client=False,
        limits=limits,
        on_request=lambda c, r: c.respond(r.stream_id, 200),
        on_fault=(faults if faults is not None else []).append,
    )
    to_server, to_client = Wire(), Wire()
    to_server.peer, to_client.peer = server, client
    client.connection_made(to_server)  # type: ignore[arg-type]
    server.connection_made(to_client)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    return client, server, to_server


def stop(*conns: HboneConnection) -> None:
    for conn in conns:
        if conn._timer is not None:
            conn._timer.cancel()


def test_a_quiet_stream_stays_open_while_the_peer_answers_pings() -> None:
    async def main() -> None:
        client, server, wire = await pair()
        handler = Handler()
        client.open_stream("10.0.0.1:80", {}, handler)
        await asyncio.sleep(0.5)  # 10 PING intervals, 3 timeouts, not one byte of the stream
        assert not wire.aborted and handler.resets == []
        assert any(data[3:4] == b"\x06" for data in wire.sent), "PING frames went out"
        stop(client, server)

    asyncio.run(main())


def test_a_vanished_peer_is_detected_and_every_stream_on_it_reset() -> None:
    async def main() -> None:
        client, server, wire = await pair()
        handlers = [Handler(), Handler()]
        for handler in handlers:
            client.open_stream("10.0.0.1:80", {}, handler)
        await asyncio.sleep(0.02)
        server_wire = server.transport
        assert isinstance(server_wire, Wire)
        server_wire.cut = True  # nothing comes back any more, not even PING acks
        await asyncio.sleep(0.3)  # > interval + timeout, and a tick to see it
        assert wire.aborted, "the silent peer was not detected"
        client.connection_lost(None)  # what the transport does after abort()
        assert [h.resets for h in handlers] == [[8], [8]]  # CANCEL: both streams freed
        assert client.handlers == {} and client.closed.done()
        stop(client, server)

    asyncio.run(main())


def test_a_connection_without_streams_goes_away_after_the_idle_timeout() -> None:
    async def main() -> None:
        client, server, wire = await pair(idle_timeout_s=0.12)
        await asyncio.sleep(0.3)
        assert wire.closing and not wire.aborted
        assert any(data[3:4] == b"\x07" for data in wire.sent), "GOAWAY went out"
        stop(client, server)

    asyncio.run(main())


def test_a_connection_whose_first_request_never_comes_gets_goaway_and_is_counted() -> None:
    """C-2 at the edge: the timer asks the protocol, and the close is the peer's fault."""

    async def main() -> None:
        faults: list[str] = []
        client, server, _ = await pair(limits=p.Limits(header_timeout_s=0.1), faults=faults)
        await asyncio.sleep(0.3)
        assert faults == ["h2_header_timeout"]
        server_wire = server.transport
        assert isinstance(server_wire, Wire)
        assert server_wire.closing and not server_wire.aborted
        assert any(data[3:4] == b"\x07" for data in server_wire.sent), "GOAWAY went out"
        stop(client, server)

    asyncio.run(main())


def test_a_request_in_time_keeps_the_connection() -> None:
    async def main() -> None:
        faults: list[str] = []
        client, server, wire = await pair(limits=p.Limits(header_timeout_s=0.1), faults=faults)
        client.open_stream("10.0.0.1:80", {}, Handler())
        await asyncio.sleep(0.3)
        assert faults == [] and not wire.closing
        stop(client, server)

    asyncio.run(main())


def test_a_peer_that_reads_nothing_for_the_stall_timeout_is_aborted_and_counted() -> None:
    """H-10: our writes stay paused (the peer's TCP window is shut, PINGs cannot go out) while
    the peer may still send: the connection is aborted, and every stream on it reset."""

    async def main() -> None:
        faults: list[str] = []
        client, server, _ = await pair(limits=p.Limits(stall_timeout_s=0.2), faults=faults)
        handler = Handler()
        client.open_stream("10.0.0.1:80", {}, handler)
        await asyncio.sleep(0.02)
        server.pause_writing()  # what the transport says when its buffer is over the mark
        await asyncio.sleep(0.1)
        server_wire = server.transport
        assert isinstance(server_wire, Wire)
        assert not server_wire.aborted, "aborted before the stall timeout"
        await asyncio.sleep(0.3)
        assert server_wire.aborted
        assert faults == ["hbone_peer_not_reading"]
        stop(client, server)

    asyncio.run(main())
