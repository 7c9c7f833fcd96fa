"""RELIABILITY L-3: a bulk transfer through both in-process ztunnels to a reader slower than the
sender keeps every buffer bounded by design (the back-pressure chain of ztunnel.proxy.relay),
whatever the size of the transfer, and delivers every byte."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from tests.unit.ztunnel.harness import mesh
from ztunnel.hbone.protocol import STREAM_WINDOW
from ztunnel.proxy.relay import MAX_PENDING

MIB = 1 << 20
TRANSFER = 64 * MIB  # 16 stream windows


@pytest.mark.usefixtures("state_dir")
def test_a_slow_reader_holds_at_most_a_stream_window_in_each_ztunnel() -> None:
    async def main() -> None:
        async with mesh() as m:
            got: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

            async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                digest, n = hashlib.sha256(), 0
                while data := await reader.read(64 * 1024):
                    digest.update(data)
                    n += len(data)
                    await asyncio.sleep(0.001)  # ~64 MB/s at most: the sender is faster
                writer.close()
                got.set_result((n, digest.hexdigest()))

            server = await asyncio.start_server(slow, m.server_ip, 9102)
            _, writer, code = await m.socks((m.server_ip, 9102))
            assert code == 0
            peaks = {"node1": 0, "node2": 0}

            async def watch() -> None:
                while True:
                    for node, proxy in m.proxies.items():
                        held = sum(record.cost() for record in proxy.active.values())
                        peaks[node] = max(peaks[node], held)
                    await asyncio.sleep(0.002)

            watching = asyncio.create_task(watch())
            payload = bytes(range(256)) * (TRANSFER // 256)
            for i in range(0, TRANSFER, MIB):
                writer.write(payload[i : i + MIB])
                await writer.drain()
            writer.write_eof()
            assert await asyncio.wait_for(got, 60) == (
                TRANSFER,
                hashlib.sha256(payload).hexdigest(),
            )
            watching.cancel()
            writer.close()
            server.close()
            # The source holds what waits for the stream's window (then it stops reading); the
            # destination what the stream's window let in while the reader was behind.
            assert 0 < peaks["node1"] <= MAX_PENDING + 256 * 1024, peaks
            assert MIB < peaks["node2"] <= STREAM_WINDOW + 64 * 1024, peaks

    asyncio.run(main())
