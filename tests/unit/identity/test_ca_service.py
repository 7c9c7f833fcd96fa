"""The controller's CA over real TLS on loopback (no root): issuance, refusals and their metrics,
controller authentication, and the certificate manager through a CA outage (F-6, F-7)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api import validate
from api.spiffe import SpiffeId, controller_identity
from common import http1, tls
from controller.ca import authority
from controller.main import Controller, Settings
from localcluster.store import ClusterInfo, ClusterStore, ObjectSet
from ztunnel.identity.caclient import CaClient, CaError, build_csr
from ztunnel.identity.manager import CertificateManager

CLIENT = SpiffeId("cluster.local", "demo", "client")
TOKENS = {"node1": "token-node-1", "node2": "token-node-2"}


def _setup_store(cluster: str, ttl_s: int) -> ClusterStore:
    store = ClusterStore(cluster)
    store.create(ClusterInfo(cluster, 2, workload_cert_ttl_s=ttl_s))
    objects = ObjectSet({}, 0)
    for obj in (
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "c", "namespace": "demo"},
            "spec": {
                "nodeName": "node1",
                "serviceAccountName": "client",
                "containers": [{"name": "c", "command": ["x"]}],
            },
        },
    ):
        objects.put(validate(obj))
    store.commit(objects)
    for node, token in TOKENS.items():
        store.node_token_path(node).parent.mkdir(parents=True)
        store.node_token_path(node).write_text(token)
    return store


@asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[Controller]:
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    await asyncio.wait_for(controller.started.wait(), 10)
    try:
        yield controller
    finally:
        stop.set()
        await task


def client_for(controller: Controller, node: str, store: ClusterStore) -> CaClient:
    return CaClient(
        "127.0.0.1",
        controller.ports["ca"],
        TOKENS[node],
        [(store.ca_dir / "root-cert.pem").read_text()],
        controller=controller_identity("cluster.local"),
    )


def run(
    state_dir: Path, body: Callable[[Controller, ClusterStore], Awaitable[None]], ttl_s: int = 3600
) -> None:
    del state_dir  # the fixture points AMBIENTMESH_STATE_DIR at a temporary directory
    store = _setup_store("c", ttl_s)

    async def main() -> None:
        controller = Controller(Settings("c", listen="127.0.0.1", ca_port=0, metrics_port=0))
        async with running(controller):
            await body(controller, store)

    asyncio.run(main())


async def metrics(controller: Controller) -> str:
    status, text, _ = await http1.request(
        "127.0.0.1", controller.ports["metrics"], "GET", "/metrics"
    )
    assert status == 200
    return text.decode()


def test_issues_to_the_pods_node_and_counts_refusals(state_dir: Path) -> None:
    async def body(controller: Controller, store: ClusterStore) -> None:
        issued = await client_for(controller, "node1", store).sign(CLIENT, authority.new_key(), 600)
        assert issued.leaf.not_valid_after_utc - issued.leaf.not_valid_before_utc == (
            authority.BACKDATE + timedelta(seconds=600)
        )
        with pytest.raises(CaError, match="403 NodeNotAuthorized"):
            await client_for(controller, "node2", store).sign(CLIENT, authority.new_key(), 600)
        text = await metrics(controller)
        assert 'ambientmesh_ca_refusals_total{reason="NodeNotAuthorized"} 1.0' in text
        assert "citadel_server_success_cert_issuance_total 1.0" in text

    run(state_dir, body)


async def _raw(
    controller: Controller,
    store: ClusterStore,
    body: dict[str, Any] | bytes,
    token: str = TOKENS["node1"],
) -> tuple[int, dict[str, Any]]:
    ctx = tls.client_context([(store.ca_dir / "root-cert.pem").read_text()])
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, reply, _ = await http1.request(
        "127.0.0.1",
        controller.ports["ca"],
        "POST",
        "/v1/certificates",
        body=data,
        tls=ctx,
        headers={"authorization": f"Bearer {token}"},
    )
    return status, json.loads(reply)


def test_hostile_requests_get_named_refusals(state_dir: Path) -> None:
    other = "spiffe://cluster.local/ns/demo/sa/other"

    async def body(controller: Controller, store: ClusterStore) -> None:
        key = authority.new_key()
        good_csr = build_csr(CLIENT, key)
        cases: list[tuple[dict[str, Any] | bytes, str, int, str]] = [
            ({"identity": str(CLIENT), "csr": good_csr}, "nope", 401, "Unauthenticated"),
            (b"{not json", TOKENS["node1"], 400, "MalformedRequest"),
            ({"identity": other, "csr": good_csr}, TOKENS["node1"], 400, "CsrSanMismatch"),
            (
                {"identity": "spiffe://evil/ns/demo/sa/client", "csr": good_csr},
                TOKENS["node1"],
                403,
                "WrongTrustDomain",
            ),
            (
                {"identity": str(CLIENT), "csr": good_csr, "ttlSeconds": 1},
                TOKENS["node1"],
                400,
                "InvalidTtl",
            ),
        ]
        for request, token, status, reason in cases:
            got = await _raw(controller, store, request, token)
            assert got == (status, {"reason": reason, "message": got[1]["message"]})
        text = await metrics(controller)
        for _, _, _, reason in cases:
            assert f'ambientmesh_ca_refusals_total{{reason="{reason}"}} 1.0' in text

    run(state_dir, body)


def test_ca_client_refuses_a_server_that_is_not_the_controller(state_dir: Path) -> None:
    """I-4 for the CA itself: a server with a valid mesh cert for another identity is refused."""

    async def body(controller: Controller, store: ClusterStore) -> None:
        key = authority.new_key()
        leaf = authority.sign_leaf(
            controller.material, key.public_key(), CLIENT, timedelta(hours=1), datetime.now(UTC)
        )
        ctx = tls.server_context([authority.pem(leaf)], authority.key_pem(key))
        impostor = await http1.serve(controller.handle_ca, "127.0.0.1", 0, tls=ctx)
        client = client_for(controller, "node1", store)
        client.port = impostor.sockets[0].getsockname()[1]
        with pytest.raises(CaError, match="not the controller"):
            await client.sign(CLIENT, authority.new_key(), 600)
        impostor.close()

    run(state_dir, body)


def test_manager_renews_at_half_life_and_rides_out_a_ca_outage(state_dir: Path) -> None:
    """F-6/F-7 with a 6 s TTL: renewal at ~3 s; CA down → the valid cert is kept until expiry,
    then dropped (never presented expired); CA back → a new cert without a restart."""
    del state_dir
    store = _setup_store("c", 6)

    async def main() -> None:
        controller = Controller(Settings("c", listen="127.0.0.1", ca_port=0, metrics_port=0))
        async with running(controller):
            port = controller.ports["ca"]
            manager = CertificateManager(client_for(controller, "node1", store), ttl_s=6)
            expired: list[SpiffeId] = []
            manager.on_expired.append(expired.append)
            first = await manager.get(CLIENT)
            await asyncio.sleep(3.5)
            renewed = manager.current(CLIENT)
            assert renewed is not None
            assert renewed.serial != first.serial
            issued = await metrics(controller)
            assert "citadel_server_success_cert_issuance_total 2.0" in issued, "one renewal"
        # CA down (same port comes back later).
        down_at = time.monotonic()
        await asyncio.sleep(2)
        assert manager.current(CLIENT) == renewed, "a still-valid cert is kept"
        expiry = renewed.validity.not_after.timestamp() - time.time()
        await asyncio.sleep(max(expiry, 0) + 0.5)
        assert manager.current(CLIENT) is None, "an expired cert is never presented"
        assert expired == [CLIENT], "connections authenticated with it are told to end (F-7)"
        assert manager.dump()[0]["state"] == "Unavailable"
        assert time.monotonic() - down_at > 3  # longer than half the lifetime
        controller2 = Controller(Settings("c", listen="127.0.0.1", ca_port=port, metrics_port=0))
        async with running(controller2):
            back = await manager.get(CLIENT)
            assert back.serial not in (first.serial, renewed.serial)
        await manager.close()

    asyncio.run(main())
