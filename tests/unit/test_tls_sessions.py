"""TLS session resumption for pool dials (common.tls): real TLS 1.3 handshakes over memory BIOs
(what resumes, what each end then knows, what is never sent), and the rules for offering a
session, table-tested with a fake clock."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from api.spiffe import SpiffeId
from common import tls
from controller.ca import authority
from tests import pki
from ztunnel.hbone import protocol as p
from ztunnel.identity import verify
from ztunnel.proxy import pool

NOW = datetime.now(UTC)  # OpenSSL checks validity against the real clock


def identity(name: str, root: Any, root_key: Any) -> tuple[list[str], bytes]:
    cert, key = pki.live_leaf(root, root_key, f"spiffe://cluster.local/ns/mesh/sa/{name}")
    return [authority.pem(cert)], authority.key_pem(key)


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    root, root_key = pki.root(NOW)
    bundle = [authority.pem(root)]
    server_chain, server_key = identity("server", root, root_key)
    client_chain, client_key = identity("client", root, root_key)
    names: list[str | None] = []

    def server(tickets: bool) -> ssl.SSLContext:
        ctx = tls.server_context(
            server_chain, server_key, bundle_pem=bundle, require_client_cert=True, tickets=tickets
        )
        ctx.sni_callback = lambda _obj, name, _ctx: names.append(name)
        return ctx

    client = tls.client_context(bundle, chain_pem=client_chain, key_pem=client_key, resume=True)
    return server(True), server(False), client, names


def handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, peer: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """One connection, as uvloop makes it (`server_hostname` = the peer's name in the cache),
    then a server write the client reads, which brings the ticket."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=peer)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (obj, into, out) in enumerate(((c, s_in, c_out), (s, c_in, s_out))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            into.write(out.read())
    assert done == [True, True]
    s.write(b"x")
    c_in.write(s_out.read())
    assert c.read(1) == b"x"
    return c, s


def test_a_second_dial_to_the_same_peer_resumes_and_both_ends_still_know_each_other(
    contexts: Any,
) -> None:
    server, _, client, names = contexts
    first, _ = handshake(client, server, "spiffe://td/ns/a/sa/b@10.0.0.2:15008")
    assert not first.session_reused
    cast(tls.ResumingContext, client).sessions.remember(
        "spiffe://td/ns/a/sa/b@10.0.0.2:15008", first, (NOW + timedelta(hours=1)).timestamp()
    )
    c, s = handshake(client, server, "spiffe://td/ns/a/sa/b@10.0.0.2:15008")
    assert c.session_reused and s.session_reused
    # The SPIFFE checks run on every connection: each end still has the other's certificate.
    assert c.getpeercert(binary_form=True) and s.getpeercert(binary_form=True)
    assert names == [None, None], "no SNI: the cache key never leaves the process"
    other, _ = handshake(client, server, "spiffe://td/ns/a/sa/b@10.0.0.3:15008")
    assert not other.session_reused, "a session is only offered to the peer it was made with"


def test_a_server_without_tickets_gives_nothing_to_resume(contexts: Any) -> None:
    _, plain, client, _ = contexts
    first, _ = handshake(client, plain, "p@1")
    cast(tls.ResumingContext, client).sessions.remember("p@1", first, NOW.timestamp() + 3600)
    again, _ = handshake(client, plain, "p@1")
    assert not again.session_reused


class FakeSession:
    def __init__(self, has_ticket: bool = True, time: int = 1000, timeout: int = 7200) -> None:
        self.has_ticket, self.time, self.timeout = has_ticket, time, timeout


class FakeSSLObject:
    def __init__(self, session: FakeSession | None) -> None:
        self.session = session


@pytest.mark.parametrize(
    ("session", "now", "peer_not_after", "offered"),
    [
        (FakeSession(), 2000.0, 10_000.0, True),
        (None, 2000.0, 10_000.0, False),  # the ticket has not come yet
        (FakeSession(has_ticket=False), 2000.0, 10_000.0, False),
        (FakeSession(), 8200.0, 100_000.0, False),  # past the server's ticket lifetime
        (FakeSession(), 9950.0, 10_000.0, False),  # the peer's certificate's last minute
        (FakeSession(time=5000), 9900.0, 10_000.0, True),
    ],
)
def test_a_session_is_offered_only_while_what_it_relied_on_holds(
    session: FakeSession | None, now: float, peer_not_after: float, offered: bool
) -> None:
    cache = tls.SessionCache(clock=lambda: now)
    cache.remember("p", cast(ssl.SSLObject, FakeSSLObject(session)), peer_not_after)
    assert (cache.offer("p") is not None) is offered
    if not offered:
        assert cache.offer("p") is None  # and it is gone


def test_forget_and_the_bound_on_peers() -> None:
    cache = tls.SessionCache(clock=lambda: 2000.0)
    for i in range(tls.SessionCache.MAX_PEERS + 5):
        cache.remember(f"p{i}", cast(ssl.SSLObject, FakeSSLObject(FakeSession())), 1e9)
    assert cache.offer("p0") is None  # the least recently made went first
    assert cache.offer(f"p{tls.SessionCache.MAX_PEERS + 4}") is not None
    cache.forget("p10")
    assert cache.offer("p10") is None


def test_a_pool_dial_that_fails_forgets_the_session_it_offered() -> None:
    """Over loopback, through `pool.connect` (the real dial): the second dial resumes; a dial
    whose peer then fails the SPIFFE check leaves nothing to offer, so the next one is full."""
    root, root_key = pki.root(NOW)
    bundle = [authority.pem(root)]
    server_chain, server_key = identity("server", root, root_key)
    client_chain, client_key = identity("client", root, root_key)
    server_ctx = tls.server_context(
        server_chain,
        server_key,
        bundle_pem=bundle,
        require_client_cert=True,
        alpn=["h2"],
        tickets=True,
    )
    client_ctx = tls.client_context(
        bundle, chain_pem=client_chain, key_pem=client_key, alpn=["h2"], resume=True
    )
    server_id = SpiffeId("cluster.local", "mesh", "server")

    async def main() -> list[bool]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"\0" * 9)  # something to read: the ticket comes with it
            await reader.read()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        resumed = []
        # The third dial resumes, then fails the SPIFFE checks (another trust domain expected).
        for domain in ("cluster.local", "cluster.local", "elsewhere", "cluster.local"):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            try:
                conn = await pool.connect(
                    sock,
                    client_ctx,
                    trust_domain=domain,
                    peer=server_id,
                    limits=p.Limits(),
                    handshake_timeout_s=5,
                )
            except verify.PeerRejected:
                resumed.append(False)
                continue
            assert conn.transport is not None
            resumed.append(conn.transport.get_extra_info("ssl_object").session_reused)
            await asyncio.sleep(0.05)  # the server's first bytes, and the ticket, arrive
            conn.goaway()
        server.close()
        return resumed

    assert asyncio.run(main()) == [False, True, False, False]
