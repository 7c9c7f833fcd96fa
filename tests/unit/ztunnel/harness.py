"""An in-process mesh on loopback (no root): a real controller CA, two ztunnels (node1, node2),
"pods" at 127.<net>.<node>.<n> (every 127/8 address is local, so the original-source bind works
without IP_TRANSPARENT), echo servers as workloads. Each ztunnel's HBONE listener gets its own
port, which the other uses as the HBONE target port."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from api import validate
from api.spiffe import controller_identity
from controller.main import Controller, Settings
from localcluster.store import ClusterInfo, ClusterStore, ObjectSet
from ztunnel.hbone import protocol as p
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.manager import CertificateManager
from ztunnel.metrics import ProxyMetrics
from ztunnel.proxy.server import Proxy, ProxySettings
from ztunnel.state import workloads

ECHO_PORT = 9000
ANY = "0.0.0.0"


def base_objects(net: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "mesh", "labels": {"istio.io/dataplane-mode": "ambient"}},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}},
    ]
    for name, ns, node, ip in (
        ("client", "mesh", "node1", f"127.{net}.1.3"),
        ("server", "mesh", "node2", f"127.{net}.2.3"),
        ("legacy", "plain", "node2", f"127.{net}.2.4"),
    ):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {
                    "nodeName": node,
                    "serviceAccountName": name,
                    "containers": [{"name": "c", "command": ["x"]}],
                },
                "status": {"podIP": ip},
            }
        )
    return docs


def to_objects(docs: list[dict[str, Any]], revision: int) -> ObjectSet:
    objects = ObjectSet({}, revision)
    for doc in docs:
        obj = validate(doc)
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        if "status" in doc:
            obj["status"] = doc["status"]
        objects.put(obj)
    return objects


class Echo:
    """An upper-casing echo server that also reports the peer address it saw."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.servers: list[asyncio.Server] = []

    async def start(self, ip: str) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.peers.append(writer.get_extra_info("peername")[0])
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data.upper())
                    await writer.drain()
                writer.write(b"|EOF")
                await writer.drain()
            writer.close()

        self.servers.append(await asyncio.start_server(handle, ip, ECHO_PORT))


@dataclass
class Mesh:
    controller: Controller
    store: ClusterStore
    docs: list[dict[str, Any]]
    proxies: dict[str, Proxy] = field(default_factory=dict)
    metrics: dict[str, ProxyMetrics] = field(default_factory=dict)
    registries: dict[str, CollectorRegistry] = field(default_factory=dict)
    managers: dict[str, CertificateManager] = field(default_factory=dict)
    snapshots: dict[str, Any] = field(default_factory=dict)
    echo: Echo = field(default_factory=Echo)
    revision: int = 1
    # Each mesh gets its own 127.<net>.x.y addresses: sockets a previous test left closing can
    # never collide with this one's (a regression: EADDRINUSE on fixed loopback addresses in CI).
    net: int = 0

    @property
    def client_ip(self) -> str:
        return f"127.{self.net}.1.3"

    @property
    def server_ip(self) -> str:
        return f"127.{self.net}.2.3"

    @property
    def plain_ip(self) -> str:
        return f"127.{self.net}.2.4"

    @property
    def server(self) -> tuple[str, int]:
        return (self.server_ip, ECHO_PORT)

    def update(self, *extra: dict[str, Any]) -> None:
        """A config change: new snapshots for every node, then the policy re-check (F-10)."""
        self.revision += 1
        self.docs = [*self.docs, *extra]
        objects = to_objects(self.docs, self.revision)
        self.store.commit(objects)
        for node in self.proxies:
            self.snapshots[node] = workloads.from_objects(
                objects, node, "cluster.local", ["10.244.0.0/16"]
            )
        for proxy in self.proxies.values():
            proxy.recheck_policies()

    def metric(self, node: str, name: str, **labels: str) -> float:
        value = self.registries[node].get_sample_value(name, labels)
        return float(value or 0.0)

    async def socks(
        self,
        target: tuple[str, int],
        src_ip: str | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        """Open a SOCKS5 CONNECT through node1's ztunnel from `src_ip`; returns the reply code."""
        sock = socket.socket()
        sock.bind((src_ip or self.client_ip, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(
            sock, ("127.0.0.1", self.proxies["node1"].ports["socks5"])
        )
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(
            b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + target[1].to_bytes(2, "big")
        )
        reply = await reader.readexactly(10)
        return reader, writer, reply[1]


async def roundtrip(m: Mesh, payload: bytes, target: tuple[str, int] | None = None) -> bytes:
    """Through node1's SOCKS5 entry: send `payload`, half-close, read the whole answer."""
    reader, writer, code = await m.socks(target or m.server)
    assert code == 0
    writer.write(payload)
    writer.write_eof()  # half-close: the server answers after our EOF
    data = await reader.read()
    writer.close()
    return data


async def refused_before_tls(address: tuple[str, int]) -> bytes:
    """What a client sending the first bytes of a ClientHello gets back: b"RST" when reset
    (at connect or after), b"" at a clean close; a ServerHello would be bytes."""
    try:
        reader, writer = await asyncio.open_connection(*address)
    except ConnectionResetError:
        return b"RST"
    try:
        writer.write(b"\x16\x03\x01\x00\x05hello")
        return await asyncio.wait_for(reader.read(100), 5)
    except ConnectionResetError:
        return b"RST"
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def mesh(
    cluster: str = "c", ttl_s: int = 3600, limits: p.Limits | None = None
) -> AsyncIterator[Mesh]:
    store = ClusterStore(cluster)
    store.create(ClusterInfo(cluster, 2, workload_cert_ttl_s=ttl_s))
    net = random.randint(1, 254)
    docs = base_objects(net)
    store.commit(to_objects(docs, 1))
    tokens = {"node1": "t1", "node2": "t2"}
    for node, token in tokens.items():
        store.node_token_path(node).parent.mkdir(parents=True, exist_ok=True)
        store.node_token_path(node).write_text(token)
    controller = Controller(Settings(cluster, listen="127.0.0.1", ca_port=0, metrics_port=0))
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    await controller.started.wait()
    m = Mesh(controller, store, docs, net=net)
    await m.echo.start(m.server_ip)
    await m.echo.start(m.plain_ip)
    bundle = [(store.ca_dir / "root-cert.pem").read_text()]
    hbone_port = free_port()  # every pod's own HBONE listener binds <pod ip>:hbone_port
    for node in ("node2", "node1"):  # node2 first: node1 dials node2's HBONE port
        ca = CaClient(
            "127.0.0.1",
            controller.ports["ca"],
            tokens[node],
            bundle,
            controller=controller_identity("cluster.local"),
        )
        m.managers[node] = CertificateManager(ca, ttl_s=ttl_s)
        m.registries[node] = CollectorRegistry()
        m.metrics[node] = ProxyMetrics(m.registries[node])
        settings = ProxySettings(
            listen_ip="127.0.0.1" if node == "node1" else ANY,
            outbound_port=0,
            inbound_plain_port=0,
            hbone_port=hbone_port,
            socks_port=free_port() if node == "node1" else 0,
            transparent=False,
            hbone_target_port=hbone_port,
            limits=limits or p.Limits(),
        )
        proxy = Proxy(settings, _snapshot_of(m, node), m.managers[node], m.metrics[node])
        await proxy.start()
        m.proxies[node] = proxy
    m.revision = 0
    m.update()
    m.managers["node1"].track([workloads_identity(m, "node1", m.client_ip)])
    m.managers["node2"].track([workloads_identity(m, "node2", m.server_ip)])
    await m.managers["node1"].get(workloads_identity(m, "node1", m.client_ip))
    await m.managers["node2"].get(workloads_identity(m, "node2", m.server_ip))
    for proxy in m.proxies.values():
        await proxy.sync_hbone_listeners()

    async def sync_forever() -> None:  # as ztunnel's main loop does (rotation, enrollment)
        while True:
            await asyncio.sleep(0.2)
            for proxy in m.proxies.values():
                await proxy.sync_hbone_listeners()

    syncing = asyncio.create_task(sync_forever())
    try:
        yield m
    finally:
        syncing.cancel()
        for proxy in m.proxies.values():
            await proxy.drain(0.5)
        for manager in m.managers.values():
            await manager.close()
        for server in m.echo.servers:
            server.close()
        stop.set()
        await task


def _snapshot_of(m: Mesh, node: str) -> Callable[[], Any]:
    return lambda: m.snapshots.get(node)


def workloads_identity(m: Mesh, node: str, ip: str) -> Any:
    w = m.snapshots[node].workload(ip)
    assert w is not None
    return w.identity


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
