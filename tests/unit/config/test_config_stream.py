"""The config stream end to end in one process (no root): a real controller on loopback TLS, its
local source watching a store, and ztunnel's config client. Covers snapshot, deltas, NACK with
the previous state kept, refusal of an unknown token, and resync after a controller restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from api.meshconfig import CRL_KEY, Resource
from api.spiffe import controller_identity
from controller.ca import authority, crl
from controller.config.compile import Mesh, compile_mesh
from controller.main import Controller, Settings
from localcluster.store import ClusterInfo, ClusterStore
from tests import pki
from tests.unit.identity.test_ca_service import running
from tests.waiting import until
from ztunnel.config.client import ClientMetrics, ConfigClient

TOKENS = {"node1": "token-node-1", "node2": "token-node-2"}


def pod(name: str, node: str, ip: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}", "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": name, "containers": []},
        "status": {"podIP": ip},
    }


def edit(store: ClusterStore, change: Callable[[Any], None]) -> None:
    with store.locked():
        objects = store.read()
        change(objects)
        store.commit(objects)


def setup_store() -> ClusterStore:
    store = ClusterStore("c")
    store.create(ClusterInfo("c", 2))
    for node, token in TOKENS.items():
        store.node_token_path(node).parent.mkdir(parents=True)
        store.node_token_path(node).write_text(token)

    def seed(objects: Any) -> None:
        objects.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        objects.put(pod("a", "node1", "10.244.1.3"))
        objects.put(pod("b", "node2", "10.244.2.3"))

    edit(store, seed)
    return store


class Proxy:
    """A config client and what it was given."""

    def __init__(self, port: int, store: ClusterStore, token: str, node: str = "node1") -> None:
        self.versions: list[int] = []
        self.state: dict[str, Resource] = {}
        self.rejected: list[dict[str, Any]] = []
        self.client = ConfigClient(
            "127.0.0.1",
            port,
            token,
            [(store.ca_dir / "root-cert.pem").read_text()],
            controller=controller_identity("cluster.local"),
            on_update=self.on_update,
            metrics=ClientMetrics(CollectorRegistry()),
            on_reject=self.rejected.append,
        )
        self.task = asyncio.create_task(self.client.run())

    def on_update(self, resources: dict[str, Resource], version: int) -> None:
        self.state, self.versions = resources, [*self.versions, version]

    def names(self) -> set[str]:
        return {r["name"] for r in self.state.values() if r["type"] == "workload"}

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def controller(port: int = 0) -> AsyncIterator[Controller]:
    settings = Settings("c", listen="127.0.0.1", ca_port=port, metrics_port=0)
    async with running(Controller(settings)) as c:
        yield c


def test_snapshot_then_deltas_and_status(state_dir: Path) -> None:
    del state_dir
    store = setup_store()

    async def main() -> None:
        async with controller() as c:
            proxy = Proxy(c.ports["ca"], store, TOKENS["node1"])
            await until(lambda: proxy.names() == {"a", "b"})
            first = proxy.versions[-1]
            edit(store, lambda o: o.put(pod("c", "node2", "10.244.2.4")))
            await until(lambda: proxy.names() == {"a", "b", "c"})
            assert proxy.versions[-1] > first
            status = c.config.status()
            await until(lambda: c.config.status()["proxies"][0]["ackedVersion"] == c.config.version)
            assert [(p["kind"], p["node"]) for p in status["proxies"]] == [("ztunnel", "node1")]
            assert c.config.metrics.push_seconds._sum.get() > 0  # the delta's push was timed
            await proxy.stop()
            await until(lambda: not c.config.status()["proxies"])

    asyncio.run(main())


def test_rejected_update_is_nacked_and_the_previous_state_kept(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F-12: the controller sends an invalid resource; the proxy keeps serving what it had."""
    del state_dir
    store = setup_store()

    def hostile(objects: Any) -> Mesh:
        mesh = compile_mesh(objects)
        for res in mesh.resources.values():
            if res["type"] == "workload" and res["name"] == "poison":
                res["ip"] = "999.1.1.1"
        return mesh

    monkeypatch.setattr("controller.config.server.compile_mesh", hostile)

    async def main() -> None:
        async with controller() as c:
            proxy = Proxy(c.ports["ca"], store, TOKENS["node1"])
            await until(lambda: proxy.names() == {"a", "b"})
            good = dict(proxy.state)
            edit(store, lambda o: o.put(pod("poison", "node1", "10.244.1.9")))
            await until(lambda: c.config.metrics.nacks._value.get() == 1)
            assert proxy.state == good
            status = c.config.status()["proxies"][0]
            assert status["nackedVersion"] == c.config.version
            assert "workload uid-poison: ip" in status["lastError"]
            assert status["ackedVersion"] < c.config.version
            assert len(proxy.rejected) == 1, "the proxy is told what it rejected (F-11)"
            # The next good change is diffed against what the proxy ACKed, and lands.
            edit(store, lambda o: o.remove(next(r for r in o._items if r.name == "poison")))
            edit(store, lambda o: o.put(pod("d", "node1", "10.244.1.5")))
            await until(lambda: proxy.names() == {"a", "b", "d"})
            await proxy.stop()

    asyncio.run(main())


def test_unknown_token_is_refused(state_dir: Path) -> None:
    del state_dir
    store = setup_store()

    async def main() -> None:
        async with controller() as c:
            proxy = Proxy(c.ports["ca"], store, "not-a-node-token")
            await until(lambda: "401" in proxy.client.last_error)
            assert proxy.state == {}
            assert c.config.status()["proxies"] == []
            await proxy.stop()

    asyncio.run(main())


def test_controller_restart_resyncs_without_restarting_the_proxy(state_dir: Path) -> None:
    """F-6: while the controller is away the proxy keeps its config; on return it resyncs."""
    del state_dir
    store = setup_store()

    async def main() -> None:
        async with controller() as c:
            port = c.ports["ca"]
            proxy = Proxy(port, store, TOKENS["node1"])
            await until(lambda: proxy.names() == {"a", "b"})
        assert proxy.names() == {"a", "b"}, "config dropped while the controller is down"
        edit(store, lambda o: o.put(pod("while-away", "node2", "10.244.2.8")))
        async with controller(port) as c2:
            await until(lambda: "while-away" in proxy.names(), timeout=10)
            await until(lambda: bool(c2.config.status()["proxies"]))
            await proxy.stop()

    asyncio.run(main())


def test_ten_thousand_workloads_reach_a_proxy_and_a_change_follows(state_dir: Path) -> None:
    """PERF.md: 10 000 simulated workloads pushed without a proxy falling behind. Measured (not
    asserted): snapshot size and time, and the delta after one change."""
    del state_dir
    store = setup_store()

    def many(objects: Any) -> None:
        for i in range(10_000):
            node = f"node{i % 2 + 1}"
            objects.put(pod(f"w{i}", node, f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"))

    edit(store, many)

    async def main() -> None:
        async with controller() as c:
            started = time.monotonic()
            proxy = Proxy(c.ports["ca"], store, TOKENS["node1"])
            await until(lambda: len(proxy.names()) == 10_002, timeout=60)
            snapshot_s = time.monotonic() - started
            size = len(json.dumps(list(proxy.state.values())))
            edit_started = time.monotonic()
            edit(store, lambda o: o.put(pod("late", "node2", "10.200.0.1")))
            started = time.monotonic()
            edit_s = started - edit_started
            await until(lambda: "late" in proxy.names(), timeout=30)
            delta_s = time.monotonic() - started
            await until(lambda: c.config.status()["proxies"][0]["ackedVersion"] == c.config.version)
            print(
                f"10k workloads: snapshot {size / 1e6:.2f} MB in {snapshot_s:.2f}s "
                f"; one change: store edit {edit_s:.2f}s, then commit → proxy {delta_s:.2f}s"
            )
            await proxy.stop()

    asyncio.run(main())


def test_a_herd_of_proxies_resyncs_after_an_outage_in_bounded_batches(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L-7: every proxy reconnects at once after a controller restart; the controller admits at
    most its snapshot slots at a time, and every proxy resyncs."""
    del state_dir
    store = setup_store()
    for i in range(3, 31):
        store.node_token_path(f"node{i}").parent.mkdir(parents=True, exist_ok=True)
        store.node_token_path(f"node{i}").write_text(f"token-{i}")
    info = store.info()
    (store.root / "cluster.yaml").write_text(yaml.safe_dump({**info.__dict__, "nodes": 30}))
    tokens = [TOKENS["node1"], TOKENS["node2"], *(f"token-{i}" for i in range(3, 31))]
    peak = [0]

    class Slots(asyncio.Semaphore):
        """The controller's snapshot slots, counted; each snapshot held a while, as a big one
        would be, so that a herd overlaps."""

        held = 0

        async def __aenter__(self) -> None:
            await super().__aenter__()
            Slots.held += 1
            peak[0] = max(peak[0], Slots.held)
            await asyncio.sleep(0.05)

        async def __aexit__(self, *exc: Any) -> None:
            Slots.held -= 1
            await super().__aexit__(*exc)

    async def main() -> None:
        async with controller() as c:
            port = c.ports["ca"]
            proxies = [Proxy(port, store, t) for t in tokens]
            await until(lambda: all(p.names() == {"a", "b"} for p in proxies), timeout=20)
        edit(store, lambda o: o.put(pod("after", "node2", "10.244.2.9")))
        async with controller(port) as c2:
            c2.config._snapshot_slots = Slots(3)
            await until(lambda: all("after" in p.names() for p in proxies), timeout=40)
            await until(lambda: len(c2.config.status()["proxies"]) == len(tokens))
            assert peak[0] == 3, f"{peak[0]} snapshots in flight at once (slots: 3)"
            for p in proxies:
                await p.stop()

    asyncio.run(main())


def test_the_cas_crl_reaches_the_proxies_and_a_bad_one_changes_nothing(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELIABILITY I-9: `ca-crl.pem` beside the CA is streamed to every proxy; one the CA did
    not sign is refused with a count and the last good one stays; removing it withdraws it."""
    del state_dir
    monkeypatch.setattr(crl, "POLL_S", 0.02)
    store = setup_store()

    async def main() -> None:
        async with controller() as c:
            proxy = Proxy(c.ports["ca"], store, TOKENS["node1"])
            await until(lambda: proxy.names() == {"a", "b"})
            assert CRL_KEY not in proxy.state
            ca = c.material
            good = pki.crl(ca.signing_cert, ca.signing_key, [1234])
            path = store.ca_dir / crl.CRL_FILE
            path.write_text(good)
            await until(lambda: proxy.state.get(CRL_KEY, {}).get("pem") == good)
            forged = pki.crl(ca.signing_cert, authority.new_key(), [])
            path.write_text(forged + "\n")
            await until(lambda: c.crl.metrics.errors._value.get() == 1)
            assert proxy.state[CRL_KEY]["pem"] == good
            path.unlink()
            await until(lambda: CRL_KEY not in proxy.state)
            await proxy.stop()

    asyncio.run(main())
