"""RELIABILITY I-7 / W-5 at the waypoint's HBONE port: a client without a certificate, with one
from a CA the mesh does not trust, or from another trust domain gets nothing (no HTTP/2 byte, no
tunnel), and each refusal is counted with its reason."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from common import tls
from controller.ca import authority
from tests import pki
from tests.unit.waypoint.test_waypoint_listener import (
    NOW,
    Certs,
    certificate,
    rejections,
    waypoint,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def client(trusted: object, issuer: tuple[object, object] | None, uri: str) -> ssl.SSLContext:
    """A client context trusting `trusted`; with a leaf for `uri` from `issuer`, if any."""
    if issuer is None:
        return tls.client_context([authority.pem(trusted)], alpn=["h2"])  # type: ignore[arg-type]
    leaf, key = pki.live_leaf(issuer[0], issuer[1], uri)  # type: ignore[arg-type]
    return tls.client_context(
        [authority.pem(trusted)],  # type: ignore[arg-type]
        chain_pem=[authority.pem(leaf)],
        key_pem=authority.key_pem(key),
        alpn=["h2"],
    )


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("no certificate", "tls_peer_did_not_return_a_certificate"),
        ("another CA", "tls_certificate_verify_failed"),
        ("another trust domain", "peer_trust_domain_mismatch"),
    ],
)
def test_an_unauthenticated_client_gets_nothing_from_the_waypoint(who: str, reason: str) -> None:
    root, root_key = pki.root(NOW)
    evil_root, evil_key = pki.root(NOW, name="evil root")
    uri = "spiffe://cluster.local/ns/demo/sa/client"
    ctx = {
        "no certificate": lambda: client(root, None, uri),
        "another CA": lambda: client(root, (evil_root, evil_key), uri),
        "another trust domain": lambda: client(
            root, (root, root_key), "spiffe://evil.local/ns/demo/sa/client"
        ),
    }[who]()

    async def main() -> None:
        proxy = waypoint(Certs(certificate(root, root_key)))
        await proxy.sync()
        got = b""
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.port, ssl=ctx, server_hostname=""
            )
            writer.write(PREFACE)
            got = await asyncio.wait_for(reader.read(), 5)
        assert got == b"", f"{who}: the waypoint answered {got[:40]!r}"
        for _ in range(50):  # the server's side may end after the client's
            if rejections(proxy, reason):
                break
            await asyncio.sleep(0.02)
        assert rejections(proxy, reason) == 1, f"{who}: {reason} not counted"
        assert not proxy._tasks, "a tunnel was served"
        await proxy.close(0.1)

    asyncio.run(main())
