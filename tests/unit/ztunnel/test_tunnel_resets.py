"""A tunnel's end never reaches past its own stream (RELIABILITY C-3, H-6), found by the stateful
pair test (test_stateful_pair.py):

- a client that closed at once, so that its socket was reset by the time the FIN for it was due,
  made `write_eof` raise ENOTCONN inside the HBONE connection's read callback, which closed the
  pooled connection and every other tunnel on it;
- a stream reset while ztunnel was still dialing its pod left a connection record, the active
  gauge and the dialed socket behind for good."""

from __future__ import annotations

import asyncio
import errno
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events

from tests.unit.hbone.test_connection_timers import Handler, pair, stop
from tests.unit.ztunnel.harness import Mesh, mesh
from tests.unit.ztunnel.test_hbone_wire import _client_ctx, _tls
from ztunnel.hbone.connection import HboneConnection
from ztunnel.proxy.relay import Tunnel


class FakeConn:
    """What a tunnel calls on its HBONE connection."""

    def __init__(self) -> None:
        self.resets: list[int] = []
        self.finished_streams: list[int] = []

    def reset(self, stream_id: int, code: int = 8) -> None:
        self.resets.append(stream_id)

    def finished(self, stream_id: int) -> None:
        self.finished_streams.append(stream_id)

    def send(self, stream_id: int, data: Any) -> int:
        return len(data)

    def end(self, stream_id: int) -> None: ...

    def ack(self, stream_id: int, size: int) -> None: ...

    write_paused = False


class ResetSocket(asyncio.Transport):
    """A TCP transport whose peer has reset it: `shutdown` fails with ENOTCONN."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: Any) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None:
        self.aborted = True


def test_write_eof_on_a_reset_socket_ends_only_that_tunnel() -> None:
    async def body() -> None:
        closed: list[Tunnel] = []
        tunnel = Tunnel(on_close=closed.append)
        tcp, conn = ResetSocket(), FakeConn()
        tunnel.connection_made(tcp)
        tunnel.attach(cast(HboneConnection, conn), 7)
        tunnel.on_end()  # raised into the HBONE connection before the fix
        assert tunnel.done and closed == [tunnel]
        assert tcp.aborted
        assert conn.resets == [7], "the stream is reset: the peer must not wait for our FIN"
        assert "Transport endpoint is not connected" in tunnel.stats.error

    asyncio.run(body())


def test_a_stream_reset_before_the_dial_completes_resets_the_dialed_socket() -> None:
    async def body() -> None:
        closed: list[Tunnel] = []
        tunnel = Tunnel(on_close=closed.append)
        tunnel.on_reset(8)  # RST_STREAM while the pod's connection is still being made
        tcp = ResetSocket()
        tunnel.connection_made(tcp)
        assert tcp.aborted, "the dialed socket would stay open with no one to close it"
        assert closed == [tunnel]

    asyncio.run(body())


async def idle(m: Mesh) -> list[str]:
    """Until neither ztunnel holds a connection record or a stream handler; what is left."""
    left: list[str] = []
    for _ in range(200):
        left = [f"{n}: {len(p.active)} records" for n, p in m.proxies.items() if p.active]
        left += [
            f"node1: {len(c.handlers)} streams"
            for c in m.proxies["node1"].pool.connections()
            if c.handlers
        ]
        if not left:
            break
        await asyncio.sleep(0.02)
    return left


def test_clients_that_close_at_once_leave_the_pooled_hbone_connection_up() -> None:
    async def main() -> None:
        async with mesh() as m:
            for _ in range(20):
                _, writer, code = await m.socks(m.server)
                assert code == 0
                writer.close()
            assert await idle(m) == []
            assert m.proxies["node1"].pool.dials == 1, "a client's close ended the connection"

    asyncio.run(main())


def test_a_stream_reset_while_ztunnel_dials_the_pod_leaves_nothing() -> None:
    async def main() -> None:
        async with mesh() as m:
            reader, writer = await _tls(m, _client_ctx(m))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            headers = [(":method", "CONNECT"), (":authority", f"{m.server[0]}:{m.server[1]}")]
            for stream_id in (1, 3, 5):
                conn.send_headers(stream_id, headers)
                conn.reset_stream(stream_id)  # in the same read: before the dial task runs
            writer.write(conn.data_to_send())
            conn.send_headers(7, headers)  # the connection still serves the next tunnel
            writer.write(conn.data_to_send())
            status = 0
            while not status:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "connection closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 7:
                        status = int(dict(event.headers)[b":status"])
            assert status == 200
            conn.reset_stream(7)
            writer.write(conn.data_to_send())
            assert await idle(m) == []
            writer.close()

    asyncio.run(main())


def test_a_failing_stream_handler_resets_its_stream_and_keeps_the_connection() -> None:
    """Whatever the next such bug is, it ends one stream: the connection, the other streams on
    it go on, and the failure is counted."""

    class Broken(Handler):
        def on_response(self, status: int) -> None:
            raise RuntimeError("a bug in a tunnel")

    async def main() -> None:
        client, server, wire = await pair()
        faults: list[str] = []
        client.on_fault = faults.append
        healthy, broken = Handler(), Broken()
        client.open_stream("10.0.0.1:80", {}, healthy)
        client.open_stream("10.0.0.1:80", {}, broken)
        await asyncio.sleep(0.05)
        assert faults == ["stream_handler_error"]
        assert broken.resets == [h2.errors.ErrorCodes.INTERNAL_ERROR]
        assert healthy.resets == [] and not wire.aborted and not wire.closing
        assert client.accepting_streams and len(client.handlers) == 1
        stop(client, server)

    asyncio.run(main())
