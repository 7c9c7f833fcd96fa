"""A draining ztunnel (RELIABILITY F-4(b)) through real sockets and TLS: the moment node2 starts
to drain, its peers get GOAWAY(NO_ERROR) on every HBONE connection and open no new stream on
it; a tunnel already open goes on both ways until it ends, the connection then closes at once
(the drain does not wait for its deadline); a tunnel still open at the deadline is cut."""

from __future__ import annotations

import asyncio

from tests.unit.ztunnel.harness import Mesh, mesh
from tests.unit.ztunnel.test_hbone_wire import REJECTIONS
from ztunnel.hbone.connection import HboneConnection

DEADLINE_S = 5.0


def pooled(m: Mesh) -> HboneConnection:
    (conn,) = m.proxies["node1"].pool.connections()
    return conn


async def until(condition: object, timeout_s: float = 3.0) -> bool:
    assert callable(condition)
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


def rejections(m: Mesh) -> float:
    return sum(
        s.value
        for node in ("node1", "node2")
        for family in m.registries[node].collect()
        for s in family.samples
        if s.name.startswith(REJECTIONS)
    )


def test_an_open_tunnel_goes_on_through_the_drain_and_then_the_connection_closes() -> None:
    async def main() -> None:
        async with mesh() as m:
            reader, writer, code = await m.socks(m.server)
            assert code == 0
            writer.write(b"one")
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ONE"
            conn = pooled(m)
            loop = asyncio.get_running_loop()
            start = loop.time()
            draining = asyncio.create_task(m.proxies["node2"].drain(DEADLINE_S))
            assert await until(lambda: not conn.accepting_streams), "no GOAWAY reached node1"
            assert conn.proto.h2.peer_last_stream_id is not None
            assert not conn.closed.done()
            writer.write(b"two")  # the tunnel still carries bytes both ways
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"TWO"
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"|EOF"
            writer.close()
            await asyncio.wait_for(draining, DEADLINE_S + 1)
            assert loop.time() - start < DEADLINE_S / 2, "the drain waited for its deadline"
            await asyncio.wait_for(conn.closed, 3)  # closed once its last stream ended
            assert not m.proxies["node2"].hbone_conns
            assert rejections(m) == 0

    asyncio.run(main())


def test_a_tunnel_still_open_at_the_drain_deadline_is_cut() -> None:
    async def main() -> None:
        async with mesh() as m:
            reader, writer, code = await m.socks(m.server)
            assert code == 0
            writer.write(b"x")
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"X"
            conn = pooled(m)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await m.proxies["node2"].drain(1.0)
            assert 1.0 <= loop.time() - start < 2.0
            try:
                data = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:
                data = b"reset"
            assert data == b"reset", "a cut tunnel must not look like a clean end"
            writer.close()
            await asyncio.wait_for(conn.closed, 3)
            assert not m.proxies["node2"].active and not m.proxies["node1"].active

    asyncio.run(main())
