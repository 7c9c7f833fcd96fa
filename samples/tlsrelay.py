"""A raw mTLS relay pair of our own (uvloop, TLS 1.3, no HTTP/2): the bench's yardstick for what
HBONE's framing costs on top of the same Python TLS plumbing (PERF.md "HBONE framing cost").

  python3 -m samples.tlsrelay client LISTEN HOST:PORT CERT KEY CA   plaintext in, TLS out
  python3 -m samples.tlsrelay server LISTEN HOST:PORT CERT KEY CA   TLS in, plaintext out

LISTEN is ADDRESS:PORT, or PORT alone: a client then listens on 127.0.0.1 (it runs in its
client's pod), a server on every address.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from typing import cast

import uvloop

from common import heap, tls

HIGH_WATER = 1024 * 1024  # like the ztunnel relay: a bounded buffer, then back-pressure


class Pipe(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads into its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early += data
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            if self.peer.transport.can_write_eof():
                self.peer.transport.write_eof()
                return True
            self.peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def relay(role: str, listen: str, target: str, pki: tuple[Path, Path, Path]) -> None:
    cert, key, ca = pki
    chain, key_pem, bundle = [cert.read_text()], key.read_bytes(), [ca.read_text()]
    if role == "server":
        incoming: ssl.SSLContext | None = tls.server_context(
            chain, key_pem, bundle_pem=bundle, require_client_cert=True
        )
        outgoing: ssl.SSLContext | None = None
    else:
        incoming, outgoing = None, tls.client_context(bundle, chain_pem=chain, key_pem=key_pem)
    host, _, port = target.rpartition(":")
    loop = asyncio.get_running_loop()

    def accepted() -> Pipe:
        inner = Pipe()

        async def connect() -> None:
            try:
                _, outer = await loop.create_connection(
                    Pipe, host, int(port), ssl=outgoing, server_hostname="" if outgoing else None
                )
            except OSError:
                if inner.transport is not None:
                    inner.transport.close()
                return
            inner.peer, outer.peer = outer, inner
            if inner.early and outer.transport is not None:
                outer.transport.write(bytes(inner.early))
                inner.early.clear()

        loop.create_task(connect())  # noqa: RUF006 - the transports keep the pair alive
        return inner

    bind, _, listen_port = listen.rpartition(":")
    if not bind:
        bind = "127.0.0.1" if role == "client" else "0.0.0.0"  # noqa: S104 - the pod's own netns
    server = await loop.create_server(accepted, bind, int(listen_port), ssl=incoming)
    await server.serve_forever()


def main(argv: list[str]) -> int:
    role, listen, target, cert, key, ca = argv
    heap.keep_freed()  # as ztunnel does (common.heap): the same allocator behaviour
    uvloop.run(relay(role, listen, target, (Path(cert), Path(key), Path(ca))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
