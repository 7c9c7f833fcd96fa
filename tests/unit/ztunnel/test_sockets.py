"""sockets.dial on uvloop, over loopback: connects, reports refusals as OSError, never asks the
resolver (uvloop's sock_connect sends even a numeric address through getaddrinfo)."""

from __future__ import annotations

import asyncio
import errno

import pytest
import uvloop

from tests.unit.ztunnel.harness import free_port
from ztunnel.proxy import sockets


def test_dial_connects_and_the_peer_sees_it() -> None:
    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read(5))
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = await sockets.dial(("127.0.0.1", port), src_ip=None, transparent=False, timeout_s=2)
        sock.send(b"hello")
        result = await asyncio.wait_for(got, 2)
        sock.close()
        server.close()
        return result

    assert uvloop.run(main()) == b"hello"


def test_a_refused_dial_is_an_oserror_and_closes_its_socket() -> None:
    async def main() -> None:
        await sockets.dial(
            ("127.0.0.1", free_port()), src_ip="127.0.0.1", transparent=False, timeout_s=2
        )

    with pytest.raises(OSError) as refused:
        uvloop.run(main())
    assert refused.value.errno == errno.ECONNREFUSED


def test_dial_of_a_numeric_address_skips_the_resolver_thread_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def no_resolver(*args: object, **kwargs: object) -> None:
            raise AssertionError("getaddrinfo called for a numeric address")

        monkeypatch.setattr(loop, "getaddrinfo", no_resolver, raising=False)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        (
            await sockets.dial(("127.0.0.1", port), src_ip=None, transparent=False, timeout_s=2)
        ).close()
        server.close()

    uvloop.run(main())
