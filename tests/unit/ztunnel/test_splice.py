"""Gate: a SOCKS5 handshake waits on its bytes' arrival (it polled every 5 ms, which cost each
SOCKS connection ~10 ms of wall time), and on the connection's loss."""

from __future__ import annotations

import asyncio

from ztunnel.proxy.splice import Gate


def test_gate_arrival_wakes_on_bytes_socks_poll_regression() -> None:
    async def main() -> bytes:
        gate = Gate()
        waiting = asyncio.create_task(gate.arrival())
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.data_received(b"\x05\x01\x00")
        await asyncio.wait_for(waiting, 1)
        await asyncio.wait_for(gate.arrival(), 1)  # bytes already there: returns at once
        return bytes(gate.buffer)

    assert asyncio.run(main()) == b"\x05\x01\x00"


def test_gate_arrival_wakes_on_loss() -> None:
    async def main() -> bool:
        gate = Gate()
        waiting = asyncio.create_task(gate.arrival())
        await asyncio.sleep(0)
        gate.connection_lost(None)
        await asyncio.wait_for(waiting, 1)
        return gate.lost

    assert asyncio.run(main())
