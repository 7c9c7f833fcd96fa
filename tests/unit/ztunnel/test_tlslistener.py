"""RELIABILITY L-1 at a TLS listener (ztunnel's 15008, the waypoint's): past the cap a connection
is reset before any TLS byte is sent; a slot comes back when its connection ends, whether the
handshake succeeded, failed or timed out; running out of fds pauses accepting instead of
spinning. Real sockets and handshakes on loopback. Also the fd limit a proxy starts with."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import resource
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
import uvloop

from common import fdlimit, tls
from controller.ca import authority
from tests import pki
from tests.unit.ztunnel.harness import refused_before_tls
from tests.waiting import until
from ztunnel.proxy import tlslistener
from ztunnel.proxy.tlslistener import TlsListener


class Slots:
    def __init__(self, cap: int) -> None:
        self.cap, self.used, self.refused = cap, 0, 0
        self.failures: list[str] = []

    def admit(self) -> bool:
        if self.used >= self.cap:
            self.refused += 1
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1

    def handshake_failed(self, reason: str) -> None:
        self.failures.append(reason)


class Ends(asyncio.Protocol):
    """The server's protocol: made after the handshake, `closed` when lost."""

    made: ClassVar[list[Ends]] = []

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Ends.made.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    now = datetime.now(UTC)
    root, root_key = pki.root(now)
    bundle = [authority.pem(root)]
    cert, key = pki.live_leaf(root, root_key, "spiffe://cluster.local/ns/mesh/sa/a")
    chain, key_pem = [authority.pem(cert)], authority.key_pem(key)
    server = tls.server_context(chain, key_pem, bundle_pem=bundle, require_client_cert=True)
    client = tls.client_context(bundle, chain_pem=chain, key_pem=key_pem)
    return server, client


def open_sockets() -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own fd is gone by now
            count += str(fd.readlink()).startswith("socket:")
    return count


def run(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    cap: int,
    body: Callable[[TlsListener, Slots, tuple[str, int]], Awaitable[None]],
    *,
    handshake_timeout_s: float = 5.0,
    make_socket: Callable[[], socket.socket] = socket.socket,
) -> None:
    async def main() -> None:
        Ends.made.clear()
        listening = make_socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        slots = Slots(cap)
        listener = TlsListener(
            listening, contexts[0], Ends, slots, handshake_timeout_s=handshake_timeout_s
        )
        try:
            await body(listener, slots, listening.getsockname())
        finally:
            listener.close()
            for end in Ends.made:
                if end.transport is not None:
                    cast(asyncio.Transport, end.transport).abort()
            await asyncio.sleep(0.05)

    gc.collect()  # an earlier test's unreachable sockets must not close during this one
    before = open_sockets()
    uvloop.run(main())  # as the proxies run
    gc.collect()
    assert open_sockets() == before, "every socket accepted was closed"


async def dial_tls(ctx: ssl.SSLContext, address: tuple[str, int]) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection(*address, ssl=ctx, server_hostname="")
    return writer


def test_past_the_cap_a_connection_is_reset_before_any_tls_and_a_slot_comes_back(
    contexts: Any,
) -> None:
    async def body(listener: TlsListener, slots: Slots, address: tuple[str, int]) -> None:
        first = await dial_tls(contexts[1], address)
        second = await dial_tls(contexts[1], address)
        assert slots.used == 2
        assert (
            await refused_before_tls(address) == b"RST"
        )  # no ServerHello: no handshake was started
        assert slots.refused == 1
        first.close()
        await until(lambda: slots.used == 1)
        third = await dial_tls(contexts[1], address)  # the freed slot serves the next one
        assert slots.used == 2
        second.close()
        third.close()

    run(contexts, 2, body)


def test_failed_and_timed_out_handshakes_give_their_slot_back(contexts: Any) -> None:
    no_cert = tls.client_context([])  # trusts nothing and presents no certificate

    async def body(listener: TlsListener, slots: Slots, address: tuple[str, int]) -> None:
        for _ in range(3):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await dial_tls(no_cert, address)
            await until(lambda: slots.used == 0)
        _, silent = await asyncio.open_connection(*address)  # never says hello
        await until(lambda: slots.used == 1)
        await until(lambda: slots.used == 0)  # the handshake timeout freed it
        assert not Ends.made
        silent.close()
        ok = await dial_tls(contexts[1], address)
        assert slots.used == 1
        ok.close()

    run(contexts, 1, body, handshake_timeout_s=0.3)


class Exhausted(socket.socket):
    """A listening socket that finds no fd left for its first 0.15 s of accepting."""

    failures = 0
    since = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        now = time.monotonic()
        Exhausted.since = Exhausted.since or now
        if now - Exhausted.since < 0.15:
            Exhausted.failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_running_out_of_fds_pauses_accepting_then_serves(
    contexts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tlslistener, "FD_PAUSE_S", 0.2)

    async def body(listener: TlsListener, slots: Slots, address: tuple[str, int]) -> None:
        writer = await asyncio.wait_for(dial_tls(contexts[1], address), 3)
        # Paused, not spinning on a listening socket that stayed readable.
        assert Exhausted.failures == 1
        writer.close()

    run(contexts, 4, body, make_socket=Exhausted)


@pytest.mark.parametrize(
    ("fd_limit", "ceiling", "cap"),
    [
        (1024, 16_000, 384),  # Debian's default soft limit
        (65_536, 16_000, 16_000),
        (20_000, 16_000, 9_872),
        (100, 16_000, 1),  # below the reserve: one, not zero or less
    ],
)
def test_connection_cap_keeps_two_fds_per_connection_after_the_reserve(
    fd_limit: int, ceiling: int, cap: int
) -> None:
    assert fdlimit.connection_cap(fd_limit, ceiling) == cap


def test_the_soft_fd_limit_is_raised_toward_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lower = min(soft, 512)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
        got = fdlimit.raise_soft_limit(ceiling=lower + 100)
        assert got == min(hard, lower + 100)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
