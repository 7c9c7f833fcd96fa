"""The CPU of an HBONE pool dial's TLS 1.3 mutual handshake, both ends on one core, in process
(memory BIOs, no kernel): full, and resumed from the last session, with the contexts ztunnel
uses (`tls.server_context(tickets=True)`, `tls.client_context(resume=True)`). PERF.md measured
~3.2 ms full and ~1.8-2.2 ms resumed on this kind of machine.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from pathlib import Path

from common import tls

End = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]  # the object, its incoming, its outgoing


def pair(
    client: ssl.SSLContext, server: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[End, End]:
    """A client and a server end, handshaken; the client has read the server's first bytes
    (with them, a TLS 1.3 ticket)."""
    ends = []
    for ctx, side in ((client, False), (server, True)):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_side=side, session=None if side else session)
        ends.append((obj, incoming, outgoing))
    (c, c_in, c_out), (s, s_in, s_out) = ends
    for _ in range(10):
        for obj in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    s.write(b"x")
    c_in.write(s_out.read())
    c.read(1)
    return (c, c_in, c_out), (s, s_in, s_out)


def contexts(pki: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) with the bench's PKI, mutual, as ztunnel's HBONE."""
    ca = [(pki / "ca.pem").read_text()]
    server = tls.server_context(
        [(pki / "server.pem").read_text()],
        (pki / "server.key").read_bytes(),
        bundle_pem=ca,
        require_client_cert=True,
        tickets=True,
    )
    client = tls.client_context(
        ca,
        chain_pem=[(pki / "client.pem").read_text()],
        key_pem=(pki / "client.key").read_bytes(),
        resume=True,
    )
    return client, server


def measure(pki: Path, count: int = 100) -> dict[str, float]:
    client, server = contexts(pki)
    session = pair(client, server)[0][0].session
    result = {}
    for name, offer in (("full_ms", None), ("resumed_ms", session)):
        pair(client, server, offer)  # warm-up
        started = time.perf_counter()
        for _ in range(count):
            (c, _, _), _ = pair(client, server, offer)
        result[name] = (time.perf_counter() - started) / count * 1e3
        if c.session_reused is not (offer is not None):
            raise RuntimeError(f"{name}: the handshake did not {'' if offer else 'not '}resume")
    return result
