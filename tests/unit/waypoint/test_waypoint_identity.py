"""A waypoint pod's credentials against the real controller (local mode, loopback TLS): its
pod-bound token gets it its own identity and nothing else, and a config stream as a waypoint;
another pod's token gets no config stream."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from api import validate
from api.meshconfig import Resource
from api.spiffe import SpiffeId, controller_identity
from controller.ca import authority, nodeauth
from controller.main import Controller, Settings
from localcluster.store import ClusterInfo, ClusterStore, ObjectSet
from tests.unit.identity.test_ca_service import running
from ztunnel.config.client import ClientMetrics, ConfigClient
from ztunnel.identity.caclient import CaClient, CaError

KEY = "pod-key"
WAYPOINT = SpiffeId("cluster.local", "demo", "waypoint")


def pod(name: str, uid: str, **labels: str) -> dict[str, Any]:
    obj = validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "demo", "labels": labels},
            "spec": {
                "nodeName": "node1",
                "serviceAccountName": name,
                "containers": [{"name": "c", "command": ["x"]}],
            },
        }
    )
    obj["metadata"]["uid"] = uid
    obj["status"] = {"podIP": "10.244.1.9"}
    return obj


def test_a_waypoint_pod_gets_its_own_identity_and_config_and_no_more(state_dir: Path) -> None:
    del state_dir
    store = ClusterStore("c")
    store.create(ClusterInfo("c", 1))
    objects = ObjectSet({}, 0)
    objects.put(validate({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}))
    objects.put(pod("waypoint", "uid-wp", **{"gateway.networking.k8s.io/gateway-name": "waypoint"}))
    objects.put(pod("client", "uid-client"))
    store.commit(objects)
    store.pod_token_key_path.parent.mkdir(parents=True)
    store.pod_token_key_path.write_text(KEY)
    waypoint_token = nodeauth.pod_token(KEY.encode(), "uid-wp")
    client_token = nodeauth.pod_token(KEY.encode(), "uid-client")

    async def main() -> None:
        controller = Controller(Settings("c", listen="127.0.0.1", ca_port=0, metrics_port=0))
        async with running(controller):
            port = controller.ports["ca"]
            bundle = [(store.ca_dir / "root-cert.pem").read_text()]
            identity = controller_identity("cluster.local")
            ca = CaClient("127.0.0.1", port, waypoint_token, bundle, controller=identity)
            assert (await ca.sign(WAYPOINT, authority.new_key(), 600)).leaf is not None
            with pytest.raises(CaError, match="NodeNotAuthorized"):
                await ca.sign(SpiffeId("cluster.local", "demo", "client"), authority.new_key(), 600)

            async def stream(token: str) -> tuple[dict[str, Resource], list[str]]:
                """What a config stream with `token` got, and the kinds the controller saw."""
                got: dict[str, Resource] = {}
                client = ConfigClient(
                    "127.0.0.1",
                    port,
                    token,
                    bundle,
                    controller=identity,
                    on_update=lambda resources, _: got.update(resources) or None,
                    metrics=ClientMetrics(CollectorRegistry()),
                )
                task = asyncio.create_task(client.run())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        while not got:
                            await asyncio.sleep(0.02)
                kinds = [p["kind"] for p in controller.config.status()["proxies"]]
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return got, kinds

            got, kinds = await stream(waypoint_token)
            assert "workload/uid-client" in got
            assert kinds == ["waypoint"]
            assert await stream(client_token) == ({}, []), "a pod must not learn the whole mesh"

    asyncio.run(main())
