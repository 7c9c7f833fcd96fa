"""samples.splicerelay (the bench's plain relay made of ztunnel's passthrough code), on
loopback: bytes both ways, the client's half-close reaches the server, a dead target refuses."""

from __future__ import annotations

import asyncio

import uvloop

from samples import splicerelay
from tests.unit.ztunnel.harness import free_port


async def connect_when_up(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    for _ in range(100):
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
    raise AssertionError("the relay never listened")


def test_relays_both_ways_with_half_close() -> None:
    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"echo:" + await reader.read())  # read() ends at the client's FIN
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        target = ("127.0.0.1", server.sockets[0].getsockname()[1])
        port = free_port()
        relay = asyncio.create_task(splicerelay.relay(("127.0.0.1", port), target))
        reader, writer = await connect_when_up(port)
        writer.write(b"hello")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        relay.cancel()
        server.close()
        return answer

    assert uvloop.run(main()) == b"echo:hello"


def test_a_dead_target_is_refused() -> None:
    async def main() -> bytes:
        port = free_port()
        relay = asyncio.create_task(
            splicerelay.relay(("127.0.0.1", port), ("127.0.0.1", free_port()))
        )
        reader, writer = await connect_when_up(port)
        try:
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            return b"reset"
        finally:
            writer.close()
            relay.cancel()

    assert uvloop.run(main()) in (b"", b"reset")
