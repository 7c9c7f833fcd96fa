"""An IP reused by another pod while config lags (RELIABILITY F-9), through real sockets: the
server pod is replaced at the same IP on node2 by a pod of another identity, and only node2's
config has caught up. node1 still expects the old identity and its pooled HBONE connection was
accepted with the old pod's certificate: the tunnel open on it is cut, and a new tunnel over
it is refused (503, counted `workload_replaced`) — nothing reaches the new pod under the old
pod's identity. ztunnel ties a listener to the pod's netns inode; ours is tied to its UID."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.unit.ztunnel.harness import Mesh, mesh, to_objects
from tests.unit.ztunnel.test_hbone_wire import REJECTIONS
from ztunnel.state import workloads


def replaced_on_node2_only(m: Mesh) -> None:
    def replaced(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] != "Pod" or doc["metadata"]["name"] != "server":
            return doc
        return {
            **doc,
            "metadata": {**doc["metadata"], "name": "newcomer"},
            "spec": {**doc["spec"], "serviceAccountName": "newcomer"},
        }

    docs = [replaced(doc) for doc in m.docs]
    objects = to_objects(docs, m.revision + 1)
    m.snapshots["node2"] = workloads.from_objects(
        objects, "node2", "cluster.local", ["10.244.0.0/16"]
    )
    new = m.snapshots["node2"].workload(m.server_ip)
    assert new is not None and new.identity.service_account == "newcomer"


async def ended(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    return True


def test_a_reused_ip_gets_nothing_under_the_old_pods_identity() -> None:
    async def main() -> None:
        async with mesh() as m:
            reader, writer, code = await m.socks(m.server)
            assert code == 0
            writer.write(b"before")
            assert await asyncio.wait_for(reader.readexactly(6), 5) == b"BEFORE"
            peers = len(m.echo.peers)

            replaced_on_node2_only(m)
            m.proxies["node2"].recheck_policies()
            assert await ended(reader), "the old pod's tunnel outlived it"
            writer.close()

            reader, writer, code = await m.socks(m.server)  # node1 still expects `server`
            assert code != 0, "a tunnel to the new pod under the old pod's identity"
            writer.close()
            assert m.metric("node2", REJECTIONS, direction="inbound", reason="workload_replaced")
            assert len(m.echo.peers) == peers, "the destination was reached"

    asyncio.run(main())
