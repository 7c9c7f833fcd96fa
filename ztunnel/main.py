"""The ztunnel process. This stage: workload identities of the node's enrolled pods, admin and
readiness endpoints. (The L4 proxy — HBONE listeners 15001/15006/15008 — is the next stage.)

Ports (ztunnel's): 15000 admin (`/config_dump`, loopback only), 15020 `/metrics`,
15021 `/healthz/ready`. Local mode reads pods from the cluster's store until the controller
streams them (control-plane stage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.ambient import enrolled
from api.objects import ObjectRef
from api.spiffe import SpiffeId
from common import http1
from controller.main import CA_PORT, controller_identity
from localcluster import naming
from localcluster.store import ClusterStore, StoreWatcher
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.manager import CertificateManager

log = logging.getLogger("ztunnel")

ADMIN_PORT = 15000
METRICS_PORT = 15020
READINESS_PORT = 15021
POLL_S = 0.2  # store poll; replaced by the controller's stream in the control-plane stage


@dataclass(frozen=True)
class Settings:
    cluster: str
    """Local cluster this ztunnel belongs to."""
    node: str
    """The node whose pods this ztunnel serves."""
    controller: str
    """host[:port] of the controller (CA on 15012)."""


def local_workloads(watcher: StoreWatcher, node: str, trust_domain: str) -> list[dict[str, Any]]:
    objects = watcher.current
    out = []
    for pod in objects.list("Pod"):
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") != node:
            continue
        namespace = objects.get(ObjectRef("Namespace", "", meta["namespace"]))
        out.append(
            {
                "uid": meta["uid"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "serviceAccount": spec["serviceAccountName"],
                "podIP": pod["status"]["podIP"],
                "enrolled": enrolled(pod, namespace),
                "identity": str(
                    SpiffeId(trust_domain, meta["namespace"], spec["serviceAccountName"])
                ),
            }
        )
    return out


class Ztunnel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ClusterStore(settings.cluster)
        info = self.store.info()
        self.trust_domain = info.trust_domain
        self.ttl_s = info.workload_cert_ttl_s
        self.watcher = StoreWatcher(self.store)
        self.manager: CertificateManager | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.cert_gauge = Gauge(
            "ambientmesh_workload_certificates",
            "Identities held, by state",
            ["state"],
            registry=self.registry,
        )

    def waiting_for(self) -> list[str]:
        pending = []
        if self.manager is None:
            pending.append("trust bundle (controller CA not started yet)")
        if self.watcher.current.revision == 0:
            pending.append("cluster state")
        return pending

    def _start_manager(self) -> None:
        bundle = self.store.ca_dir / "root-cert.pem"
        if self.manager is not None or not bundle.exists():
            return
        host, _, port = self.settings.controller.partition(":")
        ca = CaClient(
            host,
            int(port or CA_PORT),
            self.store.node_token_path(self.settings.node).read_text().strip(),
            [bundle.read_text()],
            controller=controller_identity(self.trust_domain),
        )
        self.manager = CertificateManager(ca, ttl_s=self.ttl_s)

    def _sync(self) -> None:
        self.watcher.poll()
        self._start_manager()
        if self.manager is None:
            return
        workloads = local_workloads(self.watcher, self.settings.node, self.trust_domain)
        self.manager.track({SpiffeId.parse(w["identity"]) for w in workloads if w["enrolled"]})
        states = [c["state"] for c in self.manager.dump()]
        for state in ("Available", "Initializing", "Unavailable"):
            self.cert_gauge.labels(state=state).set(states.count(state))

    def config_dump(self) -> dict[str, Any]:
        return {
            "node": self.settings.node,
            "trustDomain": self.trust_domain,
            "storeRevision": self.watcher.current.revision,
            "workloads": local_workloads(self.watcher, self.settings.node, self.trust_domain),
            "certificates": self.manager.dump() if self.manager else [],
        }

    async def admin(self, request: http1.Request) -> http1.Response:
        if request.target == "/config_dump":
            return http1.Response(HTTPStatus.OK, json.dumps(self.config_dump()).encode())
        return http1.Response(HTTPStatus.NOT_FOUND, b"{}")

    async def ready(self, request: http1.Request) -> http1.Response:
        if request.target != "/healthz/ready":
            return http1.Response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        if pending := self.waiting_for():
            body = ("not ready: waiting for " + ", ".join(pending) + "\n").encode()
            return http1.Response(HTTPStatus.SERVICE_UNAVAILABLE, body, "text/plain")
        return http1.Response(HTTPStatus.OK, b"ready\n", "text/plain")

    async def metrics(self, request: http1.Request) -> http1.Response:
        if request.target != "/metrics":
            return http1.Response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        return http1.Response(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    async def run(self, stop: asyncio.Event) -> None:
        servers = [
            await http1.serve(self.admin, "127.0.0.1", ADMIN_PORT),
            await http1.serve(self.ready, "0.0.0.0", READINESS_PORT),  # noqa: S104
            await http1.serve(self.metrics, "0.0.0.0", METRICS_PORT),  # noqa: S104
        ]
        log.info(
            "ztunnel for %s/%s: admin 127.0.0.1:%d, readiness :%d, metrics :%d",
            self.settings.cluster,
            self.settings.node,
            ADMIN_PORT,
            READINESS_PORT,
            METRICS_PORT,
        )
        while not stop.is_set():
            self._sync()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        for server in servers:
            server.close()
        if self.manager:
            await self.manager.close()


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m ztunnel.main")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--node", required=True)
    parser.add_argument("--controller", required=True, help="host[:port] of the controller")
    args = parser.parse_args(argv)
    return Settings(cluster=args.cluster, node=args.node, controller=args.controller)


async def amain(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Ztunnel(settings).run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(amain(settings))


if __name__ == "__main__":
    sys.exit(main())
