"""A pod whose config has arrived but whose certificate has not (RELIABILITY F-5), through real
sockets: node1's ztunnel knows the pod `late` (its config came first), but the CA, whose own
view has not caught up, refuses to sign for it. Its connection waits for the certificate up to
the on-demand bound, then is refused and counted as `no_certificate`; the destination is never
reached, in plaintext or otherwise. Once the CA signs, the same pod's traffic flows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.ztunnel.harness import Mesh, mesh, to_objects
from tests.unit.ztunnel.test_hbone_wire import REJECTIONS
from ztunnel.identity import manager
from ztunnel.proxy import socks5
from ztunnel.state import workloads

WAIT_S = 1.0  # the on-demand bound, shortened (GET_TIMEOUT_S)


def late_pod(m: Mesh) -> tuple[dict[str, Any], str]:
    ip = f"127.{m.net}.1.9"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "late", "namespace": "mesh", "labels": {"app": "late"}},
        "spec": {
            "nodeName": "node1",
            "serviceAccountName": "late",
            "containers": [{"name": "c", "command": ["x"]}],
        },
        "status": {"podIP": ip},
    }
    return pod, ip


def only_node1_knows(m: Mesh, pod: dict[str, Any]) -> None:
    """node1's snapshot has the pod; the cluster store (the CA's view) does not yet."""
    objects = to_objects([*m.docs, pod], m.revision + 1)
    m.snapshots["node1"] = workloads.from_objects(
        objects, "node1", "cluster.local", ["10.244.0.0/16"]
    )


def test_config_without_a_certificate_waits_then_refuses_never_plaintext(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(manager, "GET_TIMEOUT_S", WAIT_S)

    async def main() -> None:
        async with mesh() as m:
            pod, ip = late_pod(m)
            only_node1_knows(m, pod)
            peers_before = list(m.echo.peers)
            loop = asyncio.get_running_loop()
            start = loop.time()
            reader, writer, code = await m.socks(m.server, src_ip=ip)
            waited = loop.time() - start
            assert code == socks5.NOT_ALLOWED, f"SOCKS5 reply {code}"
            assert WAIT_S * 0.9 <= waited < WAIT_S + 3, f"refused after {waited:.2f}s"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            reason = "no_certificate"
            assert m.metric("node1", REJECTIONS, direction="outbound", reason=reason) == 1
            assert m.echo.peers == peers_before, "the destination was reached"
            assert ip not in m.echo.peers

            m.update(pod)  # the CA's view catches up: it signs, and the pod's traffic flows
            for _ in range(100):
                reader, writer, code = await m.socks(m.server, src_ip=ip)
                if code == 0:
                    break
                writer.close()
                await asyncio.sleep(0.1)
            assert code == 0
            writer.write(b"hi")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"HI|EOF"
            writer.close()

    asyncio.run(main())
