"""The source ztunnel checks who answers (RELIABILITY I-4), through real sockets and TLS: when
the destination's ztunnel presents a valid mesh certificate of another identity than the one
the config names for the destination pod (a compromised node, or a pod IP taken over), the
tunnel is refused before one byte of the client's goes out, counted as
`peer_identity_mismatch`, and nothing falls back: no plaintext to the pod, no pooled connection
kept for the next try. ztunnel does the same (`verify_identity` in its `tls/lib.rs`)."""

from __future__ import annotations

import asyncio
import dataclasses

from api.spiffe import SpiffeId
from tests.unit.ztunnel.harness import Mesh, mesh
from tests.unit.ztunnel.test_hbone_wire import REJECTIONS
from ztunnel.proxy import socks5


def expect_another_identity(m: Mesh) -> SpiffeId:
    """node1's config says the server pod is `mesh/database`; node2 still answers as
    `mesh/server`, with a certificate the mesh's CA really issued."""
    snap = m.snapshots["node1"]
    server = snap.workload(m.server_ip)
    assert server is not None
    expected = SpiffeId(server.identity.trust_domain, "mesh", "database")
    by_ip = {**snap.by_ip, m.server_ip: dataclasses.replace(server, identity=expected)}
    m.snapshots["node1"] = dataclasses.replace(snap, by_ip=by_ip)
    return expected


def test_a_destination_presenting_another_identity_is_refused_and_counted() -> None:
    async def main() -> None:
        async with mesh() as m:
            expect_another_identity(m)
            peers_before = list(m.echo.peers)
            for attempt in (1, 2):  # the second try dials again: nothing pooled, no fallback
                reader, writer, code = await m.socks(m.server)
                assert code == socks5.REFUSED
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
                reason = "peer_identity_mismatch"
                counted = m.metric("node1", REJECTIONS, direction="outbound", reason=reason)
                assert counted == attempt
            assert m.echo.peers == peers_before, "the server pod was reached"
            assert not [c for c in m.proxies["node1"].pool.connections() if c.usable]
            assert not m.proxies["node1"].active and not m.proxies["node2"].active

    asyncio.run(main())
