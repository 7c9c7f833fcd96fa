"""The controller in Kubernetes mode, whole, against the fake API server: objects from list+watch,
ztunnels authenticated by TokenReview, config streamed to them, and certificates only for the
pods of the node their token is bound to."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api.meshconfig import Resource
from api.spiffe import SpiffeId, controller_identity
from controller.ca import authority
from controller.ca.tokenreview import NODE_NAME, TokenReviewer
from controller.main import Controller, KubernetesMode, Settings
from sources.kube import KubeSource
from tests.fakekube import FakeKube, serving
from tests.unit.identity.test_ca_service import running
from ztunnel.config.client import ClientMetrics, ConfigClient
from ztunnel.identity.caclient import CaClient, CaError

ZTUNNEL = "system:serviceaccount:ambientmesh-system:ztunnel"
PODS = "/api/v1/pods"


def pod(name: str, node: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}"},
        "spec": {"nodeName": node, "serviceAccountName": name},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_controller_on_kubernetes_serves_config_and_certificates(tmp_path: Path) -> None:
    ca_dir = tmp_path / "cacerts"
    authority.load_or_create(ca_dir, "cluster.local", datetime.now(UTC))
    bundle = [(ca_dir / "root-cert.pem").read_text()]

    async def main() -> None:
        fake = FakeKube(
            reviews={
                "zt-n1": {"username": ZTUNNEL, "extra": {NODE_NAME: ["n1"]}},
                "zt-n2": {"username": ZTUNNEL, "extra": {NODE_NAME: ["n2"]}},
            }
        )
        await fake.put("/api/v1/namespaces", {"kind": "Namespace", "metadata": {"name": "demo"}})
        await fake.put(PODS, pod("a", "n1", "10.244.1.3"))
        async with serving(fake) as api:
            settings = Settings(
                "unused",
                listen="127.0.0.1",
                ca_dir=ca_dir,
                ca_port=0,
                metrics_port=0,
                source=KubeSource(api),
                kubernetes=KubernetesMode(
                    "cluster.local", 3600, TokenReviewer(api, "ambientmesh-system")
                ),
            )
            async with running(Controller(settings)) as controller:
                await exercise(fake, controller)

    async def exercise(fake: FakeKube, controller: Controller) -> None:
        port = controller.ports["ca"]
        got: dict[str, Resource] = {}
        client = ConfigClient(
            "127.0.0.1",
            port,
            "zt-n1",
            bundle,
            controller=controller_identity("cluster.local"),
            on_update=lambda resources, _: got.update(resources) or None,
            metrics=ClientMetrics(CollectorRegistry()),
        )
        streaming = asyncio.create_task(client.run())
        try:
            await _until(lambda: "workload/uid-a" in got)
            await fake.put(PODS, pod("b", "n2", "10.244.2.3"))  # a watch event
            await _until(lambda: "workload/uid-b" in got)
            assert controller.config.status()["proxies"][0]["node"] == "n1"
            # The source's list/watch metrics are served with the controller's own.
            served = generate_latest(controller.registry).decode()
            assert 'ambientmesh_source_lists_total{kind="Pod",reason="initial"} 1.0' in served

            def ca(token: str) -> CaClient:
                identity = controller_identity("cluster.local")
                return CaClient("127.0.0.1", port, token, bundle, controller=identity)

            a = SpiffeId("cluster.local", "demo", "a")
            issued = await ca("zt-n1").sign(a, authority.new_key(), 600)
            assert issued.leaf is not None
            with pytest.raises(CaError, match="NodeNotAuthorized"):
                await ca("zt-n2").sign(a, authority.new_key(), 600)
            with pytest.raises(CaError, match="Unauthenticated"):
                await ca("forged").sign(a, authority.new_key(), 600)
        finally:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming

    asyncio.run(main())


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
