"""A stateful property test of a REAL ztunnel pair (tests/unit/ztunnel/harness.py: the
controller's CA, node1 and node2 on loopback, HBONE = HTTP/2 CONNECT over mTLS 1.3), driven by
random client behaviour on the client pod: connections to the server pod's echo port, random
bytes, half-close, reset (SO_LINGER 0), stall (stop reading while the echo writes back),
resume, close.

Invariants, after every step: each connection's echo is a prefix of what was sent on it (the
echo upper-cases), in order; a connection that reads has all of it; a half-closed one then
gets `|EOF` and the end; no connection ends early, whatever its neighbours do (a reset never
corrupts another). At the end of each example: every remaining connection is finished
cleanly, then both ztunnels hold nothing for it (connection records, tasks, the active gauges,
streams and held acks on both ends of the pooled HBONE connection, every byte received over it
given back to the peer's window), nothing was rejected, and no file descriptor is left over.

One mesh, in one event loop, serves every example; each rule runs the loop until its step is
done (`run_until_complete`, always under `asyncio.wait_for`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.unit.ztunnel.harness import Mesh, mesh, roundtrip
from ztunnel.hbone.connection import HboneConnection
from ztunnel.proxy import sockets

MAX_OPEN = 5  # client connections open at once
MAX_BYTES_PER_CONN = 1 << 20  # far below the HBONE connection window (16 MiB) for all of them
STEP_TIMEOUT_S = 15.0  # one rule, whatever it waits for
SETTLE_TIMEOUT_S = 10.0  # every reading connection has its whole echo
CLEAN_TIMEOUT_S = 10.0  # both ztunnels forget closed connections
CONNECT_TIMEOUT_S = 5.0  # SOCKS5 handshake and tunnel set-up
FD_SLACK = 2  # fds the loop may still be closing (call_soon) when we count

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fd_count() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


class Client(asyncio.Protocol):
    """The client pod's end of one connection: what it sent and what came back."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.sent = bytearray()
        self.received = bytearray()
        self.eof = False  # the far end's FIN
        self.lost = False
        self.error: BaseException | None = None
        self.stalled = False
        self.half_closed = False

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        self.eof = True
        return True  # we close it ourselves

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc

    # --- the model ---
    @property
    def expected(self) -> bytes:
        """Everything the echo owes this connection so far."""
        return bytes(self.sent).upper() + (b"|EOF" if self.half_closed else b"")

    @property
    def complete(self) -> bool:
        return bytes(self.received) == self.expected and self.eof == self.half_closed

    def describe(self) -> str:
        return (
            f"conn#{self.number} sent={len(self.sent)} received={len(self.received)} "
            f"half_closed={self.half_closed} stalled={self.stalled} eof={self.eof} "
            f"lost={self.lost} error={self.error!r}"
        )

    def check(self) -> None:
        """What holds at any moment, reading or not."""
        expected = self.expected
        got = bytes(self.received)
        if not expected.startswith(got):
            at = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                len(expected),
            )
            raise AssertionError(f"{self.describe()}: echo differs from what was sent at {at}")
        assert not (self.eof and got != expected), f"{self.describe()}: EOF before all the echo"
        assert not self.eof or self.half_closed, f"{self.describe()}: EOF without our FIN"
        # Only a finished (half-closed, fully answered) connection may be closed by node1.
        assert not self.lost or self.complete, f"{self.describe()}: ended early"

    def reset(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None and not self.transport.is_closing():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, sockets.LINGER_ZERO)
        self.transport.abort()


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        assert chunk, f"SOCKS5 entry closed after {data!r}"
        data += chunk
    return data


async def open_client(m: Mesh, number: int) -> Client:
    """A SOCKS5 CONNECT from the client pod's IP through node1, to the server pod's echo."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.bind((m.client_ip, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", m.proxies["node1"].ports["socks5"]))
        await loop.sock_sendall(sock, b"\x05\x01\x00")
        assert await recv_exactly(sock, 2) == b"\x05\x00"
        ip, port = m.server
        await loop.sock_sendall(
            sock, b"\x05\x01\x00\x01" + socket.inet_aton(ip) + port.to_bytes(2, "big")
        )
        reply = await recv_exactly(sock, 10)
        assert reply[1] == 0, f"SOCKS5 reply {reply[1]}"
        _, client = await loop.create_connection(lambda: Client(number), sock=sock)
    except BaseException:
        sock.close()
        raise
    return client


class World:
    """The mesh the examples share."""

    def __init__(self, loop: asyncio.AbstractEventLoop, m: Mesh) -> None:
        self.loop, self.m = loop, m

    @property
    def inbound(self) -> list[HboneConnection]:
        return [c for c in self.m.proxies["node2"].hbone_conns if not c.closed.done()]

    def hbone(self) -> list[tuple[str, HboneConnection]]:
        """Every live HBONE connection: node1's pooled ones, node2's accepted ones."""
        pooled = [("node1", c) for c in self.m.proxies["node1"].pool.connections()]
        live = [c for c in pooled if not c[1].closed.done()]
        return [*live, *[("node2", c) for c in self.inbound]]

    def rejections(self) -> float:
        return sum(
            s.value
            for node in ("node1", "node2")
            for family in self.m.registries[node].collect()
            for s in family.samples
            if s.name.startswith("ambientmesh_ztunnel_rejections")
        )

    def leftovers(self) -> list[str]:
        """What either ztunnel still holds with no client connection open."""
        found: list[str] = []
        for node, proxy in self.m.proxies.items():
            if proxy.active:
                found.append(f"{node}: {len(proxy.active)} connection records")
            if proxy._tasks:
                found.append(f"{node}: {len(proxy._tasks)} tasks")
            for direction in ("outbound", "inbound"):
                value = self.m.metric(
                    node, "ambientmesh_ztunnel_active_connections", direction=direction
                )
                if value:
                    found.append(f"{node}: active_connections{{{direction}}} = {value}")
        if self.m.proxies["node1"].pool._dialing:
            found.append("node1: a pool dial pending")
        live = self.hbone()
        if self.m.proxies["node2"].hbone_in != len(self.inbound):
            found.append(
                f"node2: hbone_in={self.m.proxies['node2'].hbone_in} "
                f"with {len(self.inbound)} inbound HBONE connections"
            )
        for node, conn in live:
            window = conn.proto.h2._inbound_flow_control_window_manager
            unreturned = window.max_window_size - window.current_window_size
            unreturned -= window._bytes_processed
            state = {
                "stream handlers": len(conn.handlers),
                "open h2 streams": conn.proto.open_streams,
                "streams with held acks": len(conn.proto._held),
                "received bytes never given back": unreturned,
            }
            found += [f"{node} HBONE {conn.peer_addr}: {k}={v}" for k, v in state.items() if v]
        return found


async def wait_clean(world: World, baseline_fds: int) -> None:
    deadline = asyncio.get_running_loop().time() + CLEAN_TIMEOUT_S
    while (found := world.leftovers()) or fd_count() > baseline_fds + FD_SLACK:
        if asyncio.get_running_loop().time() > deadline:
            found.append(f"fds: {fd_count()} after, {baseline_fds} before")
            raise AssertionError("left over at teardown: " + "; ".join(found))
        await asyncio.sleep(0.01)


class ZtunnelPair(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        self.conns: list[Client] = []
        self.opened = 0
        self.broken = False  # a step failed: teardown only cleans up, the failure stands
        # What the mesh holds between examples (the pooled HBONE connection and its peer).
        self.run(self._quiet())
        self.baseline_fds = fd_count()
        self.baseline_rejections = self.world.rejections()

    async def _quiet(self) -> None:
        with contextlib.suppress(AssertionError):  # a previous example failed: it is reported
            await wait_clean(self.world, fd_count())

    def run(self, coro: Coroutine[Any, Any, None], timeout: float = STEP_TIMEOUT_S) -> None:
        try:
            self.world.loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except BaseException:
            self.broken = True
            raise

    def pick(self, index: int, *, writable: bool = False, stalled: bool | None = None) -> Client:
        candidates = [
            c
            for c in self.conns
            if (not writable or not c.half_closed) and (stalled is None or c.stalled == stalled)
        ]
        return candidates[index % len(candidates)]

    # --- waiting --------------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Until every connection that reads has its whole echo; finished ones are closed."""
        while True:
            for c in self.conns:
                c.check()
            if all(c.complete for c in self.conns if not c.stalled):
                break
            await asyncio.sleep(0.002)
        for c in [c for c in self.conns if c.half_closed and c.complete]:
            assert c.transport is not None
            c.transport.close()
            self.conns.remove(c)
        await asyncio.sleep(0)

    @invariant()
    def every_reading_connection_has_its_exact_echo(self) -> None:
        self.run(self._settle(), SETTLE_TIMEOUT_S)

    # --- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.conns) < MAX_OPEN)
    @rule()
    def open_connection(self) -> None:
        async def step() -> None:
            self.opened += 1
            client = await asyncio.wait_for(
                open_client(self.world.m, self.opened), CONNECT_TIMEOUT_S
            )
            self.conns.append(client)

        self.run(step())

    @precondition(lambda self: any(not c.half_closed for c in self.conns))
    @rule(
        index=st.integers(0, MAX_OPEN - 1),
        size=st.one_of(st.integers(1, 100), st.integers(1000, 300_000)),
        seed=st.integers(0, 2**32 - 1),
    )
    def send(self, index: int, size: int, seed: int) -> None:
        c = self.pick(index, writable=True)
        size = min(size, MAX_BYTES_PER_CONN - len(c.sent))
        data = random.Random(seed).randbytes(size)
        assert c.transport is not None
        c.transport.write(data)  # buffered as needed: a stalled reader never drains the echo
        c.sent += data

    @precondition(lambda self: any(not c.half_closed for c in self.conns))
    @rule(index=st.integers(0, MAX_OPEN - 1))
    def half_close(self, index: int) -> None:
        c = self.pick(index, writable=True)
        assert c.transport is not None
        c.transport.write_eof()
        c.half_closed = True

    @precondition(lambda self: any(not c.stalled for c in self.conns))
    @rule(index=st.integers(0, MAX_OPEN - 1))
    def stall(self, index: int) -> None:
        c = self.pick(index, stalled=False)
        assert c.transport is not None
        c.transport.pause_reading()
        c.stalled = True

    @precondition(lambda self: any(c.stalled for c in self.conns))
    @rule(index=st.integers(0, MAX_OPEN - 1))
    def resume(self, index: int) -> None:
        c = self.pick(index, stalled=True)
        assert c.transport is not None
        c.transport.resume_reading()
        c.stalled = False

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_OPEN - 1))
    def reset(self, index: int) -> None:
        c = self.pick(index)
        c.reset()
        self.conns.remove(c)

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_OPEN - 1))
    def close(self, index: int) -> None:
        c = self.pick(index)
        assert c.transport is not None
        c.transport.close()  # both ways at once: the echo still on its way is refused
        self.conns.remove(c)

    # --- the end of an example ------------------------------------------------------------------

    def teardown(self) -> None:
        if self.broken:
            for c in self.conns:
                c.reset()
            self.conns.clear()
            return
        for c in self.conns:  # every connection still open ends cleanly, all its echo read
            assert c.transport is not None
            if c.stalled:
                c.transport.resume_reading()
                c.stalled = False
            if not c.half_closed:
                c.transport.write_eof()
                c.half_closed = True
        self.run(self._settle(), SETTLE_TIMEOUT_S)
        assert not self.conns
        self.run(wait_clean(self.world, self.baseline_fds), CLEAN_TIMEOUT_S + 5)
        assert self.world.rejections() == self.baseline_rejections, "a connection was rejected"


def test_random_client_behaviour_through_a_real_ztunnel_pair(state_dir: Path) -> None:
    del state_dir  # the cluster store lives there (naming.STATE_DIR_ENV)
    loop = asyncio.new_event_loop()
    meshes = mesh()
    try:
        m = loop.run_until_complete(asyncio.wait_for(meshes.__aenter__(), 30))
        try:
            ZtunnelPair.world = World(loop, m)
            # The pooled HBONE connection the examples share, made before any baseline.
            reply = loop.run_until_complete(asyncio.wait_for(roundtrip(m, b"warm"), 10))
            assert reply == b"WARM|EOF"
            run_state_machine_as_test(ZtunnelPair, settings=SETTINGS)
            assert m.proxies["node1"].pool.dials == 1, "the pooled connection was replaced"
        finally:
            loop.run_until_complete(asyncio.wait_for(meshes.__aexit__(None, None, None), 30))
    finally:
        loop.close()
