"""HBONE's timeouts through real sockets and TLS (RELIABILITY C-2, H-10), with the ztunnels'
limits shortened: a mesh peer that completes the handshake and never sends a request (the
slowloris of HBONE) gets GOAWAY and is counted; a tunnel whose reader stopped reading is reset
once nothing got through its window for the stall timeout, at both applications, and counted."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import h2.config
import h2.connection
import h2.errors
import h2.events

from tests.unit.ztunnel.harness import Mesh, mesh
from tests.unit.ztunnel.test_hbone_wire import REJECTIONS, _client_ctx, _tls
from ztunnel.hbone import protocol as p

SHORT = p.Limits(
    header_timeout_s=0.5,
    stall_timeout_s=1.0,
    stream_window=65535,  # small windows: a stopped reader closes them at once
    connection_window=1 << 20,
)


async def counted(m: Mesh, node: str, direction: str, reason: str) -> float:
    for _ in range(100):
        if value := m.metric(node, REJECTIONS, direction=direction, reason=reason):
            return value
        await asyncio.sleep(0.05)
    return 0.0


def stalls(m: Mesh) -> float:
    reason = "h2_stream_stalled"
    return m.metric("node1", REJECTIONS, direction="outbound", reason=reason) + m.metric(
        "node2", REJECTIONS, direction="inbound", reason=reason
    )


def test_a_peer_that_never_sends_a_request_gets_goaway_after_the_header_timeout() -> None:
    async def main() -> None:
        async with mesh(limits=SHORT) as m:
            reader, writer = await _tls(m, _client_ctx(m))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            writer.write(conn.data_to_send())  # the preface and SETTINGS, then nothing
            loop = asyncio.get_running_loop()
            start = loop.time()
            code = None
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await asyncio.wait_for(reader.read(65536), 5):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ConnectionTerminated):
                            code = event.error_code
            waited = loop.time() - start
            writer.close()
            assert code == h2.errors.ErrorCodes.NO_ERROR, "no GOAWAY before the close"
            assert 0.5 <= waited < 3.0, f"closed after {waited:.2f}s, header timeout 0.5s"
            assert await counted(m, "node2", "inbound", "h2_header_timeout") == 1

    asyncio.run(main())


def test_a_tunnel_whose_reader_stopped_is_reset_after_the_stall_timeout() -> None:
    """The client writes and never reads; the echo's answer fills the windows on the way back,
    the echo stops reading in turn, and each ztunnel has data its peer's window will not take.
    After the stall timeout the stream is reset (by whichever ztunnel's timer fires first): the
    client sees a reset, not a clean end, and the stall is counted."""

    async def main() -> None:
        async with mesh(limits=SHORT) as m:
            reader, writer, code = await m.socks(m.server)
            assert code == 0

            async def flood() -> None:
                with contextlib.suppress(ConnectionError):
                    for _ in range(4096):  # up to 256 MiB; the stall stops it long before
                        writer.write(b"x" * 65536)
                        await writer.drain()

            flooding = asyncio.create_task(flood())
            for _ in range(100):
                stalled = stalls(m)
                if stalled:
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(flooding, 10)
            # Reset by whichever timer fires first; both may, before the other RST arrives.
            assert stalled in (1, 2), "the stalled stream was not reset"
            ended_by = "clean end"
            try:
                while await asyncio.wait_for(reader.read(1 << 20), 10):
                    pass  # what was delivered before the reset
            except ConnectionResetError:
                ended_by = "reset"
            writer.close()
            assert ended_by == "reset"
            for _ in range(100):  # the far ztunnel learns of the reset a moment later
                if not m.proxies["node1"].active and not m.proxies["node2"].active:
                    break
                await asyncio.sleep(0.02)
            assert not m.proxies["node1"].active
            assert not m.proxies["node2"].active

    asyncio.run(main())
