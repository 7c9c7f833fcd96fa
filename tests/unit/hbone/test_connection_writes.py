"""When HboneConnection writes (one TLS write per what it hands the transport): a lone stream's
frames go out at once, with no extra loop iteration; with several streams, the first write of
an iteration goes out at once and the rest of that iteration's frames go out together. The
waypoint answers batches of requests in one iteration: writing each on its own cost it a fifth
of its requests per core, measured (the regression this pins). A bulk send goes out at once
whatever the streams: held to the iteration's end, a socket's several 256 KiB reads went out as
one multi-MiB TLS write, whose buffer glibc mapped and unmapped each time (the other pin)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ztunnel.hbone.connection import BULK, HboneConnection


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.9", 15008) if name == "peername" else default

    def writelines(self, buffers: list[bytes]) -> None:
        self.writes.append(b"".join(buffers))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Handler:
    def on_response(self, status: int) -> None: ...
    def on_data(self, data: bytes | bytearray, flow_controlled_length: int) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, error_code: int) -> None: ...
    def on_writable(self) -> None: ...
    def on_write_paused(self) -> None: ...


def spin(seconds: float) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass


def writes_after(streams: int, sends: int, size: int = 100) -> tuple[int, int]:
    """(writes made during one callback's sends, writes made once the loop went round)."""

    async def main() -> tuple[int, int]:
        conn = HboneConnection(client=True)
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        ids = [conn.open_stream("10.0.0.1:80", {}, Handler()) for _ in range(streams)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        transport.writes.clear()
        for i in range(sends):
            conn.send(ids[i % streams], b"x" * size)
            spin(100e-6)  # the work of answering a request, between two writes
        during = len(transport.writes)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if conn._timer is not None:
            conn._timer.cancel()
        return during, len(transport.writes)

    return asyncio.run(main())


def test_a_lone_streams_frames_go_out_at_once() -> None:
    assert writes_after(streams=1, sends=3) == (3, 3)


def test_several_streams_share_an_iterations_write_waypoint_regression() -> None:
    during, after = writes_after(streams=4, sends=6)
    assert during == 1  # the first, at once
    assert after == 2  # the other five, in one write


def test_bulk_sends_go_out_at_once_multi_mib_tls_write_regression() -> None:
    # iperf3's control connection and its data connection share one HBONE connection.
    assert writes_after(streams=2, sends=4, size=BULK) == (4, 4)
    assert writes_after(streams=2, sends=4, size=BULK - 1) == (1, 2)
