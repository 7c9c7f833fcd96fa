"""The ztunnel process: the L4 proxy (15001 outbound, 15006 inbound plaintext, 15008 HBONE,
15080 SOCKS5 test entry), workload identities of the node's enrolled pods, admin and readiness.

Ports (ztunnel's): 15000 admin (`/config_dump`, loopback only), 15020 `/metrics`,
15021 `/healthz/ready`. Config comes from the controller's stream (15012, `ztunnel.config`);
`--config FILE` is the static dev mode. Until the first snapshot and the pod's certificate
exist, nothing is forwarded. SIGTERM: stop accepting, drain open connections for `--drain`
seconds, then close them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import ports
from api.ambient import ROOT_NAMESPACE
from api.meshconfig import CRL_KEY, Resource, policy_namespaces
from common import fdlimit, heap, http1
from common.signals import run_until_signalled
from localcluster import naming
from localcluster.store import FileStore, StoreWatcher
from ztunnel.config.bootstrap import Bootstrap, add_kubernetes_flags, check_kubernetes_flags
from ztunnel.config.client import ClientMetrics, ConfigClient
from ztunnel.hbone import protocol as hbone
from ztunnel.identity import revocation
from ztunnel.identity.manager import CertificateManager
from ztunnel.metrics import ProxyMetrics
from ztunnel.proxy import overload
from ztunnel.proxy.server import Proxy, ProxySettings
from ztunnel.state import workloads
from ztunnel.state.workloads import Snapshot

log = logging.getLogger("ztunnel")

POLL_S = 0.2  # housekeeping pass: listeners, certificates, status file


@dataclass(frozen=True)
class Settings:
    cluster: str
    """Local cluster this ztunnel belongs to."""
    node: str
    """The node whose pods this ztunnel serves."""
    controller: str
    """host[:port] of the controller (CA on 15012)."""
    proxy: ProxySettings = field(default_factory=ProxySettings)
    """Listeners and datapath options."""
    drain_s: float = 5.0
    """How long open connections may finish after SIGTERM (Istio's ztunnel: 5 s default)."""
    status_file: Path | None = None
    """Where this instance reports readiness (a restart hands over only once it is ready)."""
    config: Path | None = None
    """Static config (dev/test mode): a Kubernetes List of Pods, Namespaces and policies read
    instead of the cluster's store; re-read when it changes."""
    token_file: Path | None = None
    """Kubernetes: the projected ServiceAccount token (re-read: it rotates). Local: the node's
    bootstrap token in the cluster's state directory."""
    ca_bundle: Path | None = None
    """Kubernetes: the mesh's root certificate(s) (a ConfigMap). Local: the state directory's."""
    trust_domain: str | None = None
    """Kubernetes: from the command line. Local: the cluster's."""
    workload_cert_ttl_s: int | None = None
    memory_limit_bytes: int = 0
    """Weigh RSS against this for load shedding (L-6); 0: the container's cgroup limit, if any."""


def workload_dump(snapshot: Snapshot | None) -> list[dict[str, Any]]:
    return [
        {
            "uid": w.uid,
            "name": w.name,
            "namespace": w.namespace,
            "serviceAccount": w.service_account,
            "podIP": w.ip,
            "enrolled": w.enrolled,
            "waypoint": w.waypoint,
            "identity": str(w.identity),
        }
        for w in (snapshot.local_workloads() if snapshot else [])
    ]


class Ztunnel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.boot = Bootstrap.resolve(
            settings.cluster,
            lambda store: store.node_token_path(settings.node),
            trust_domain=settings.trust_domain,
            ca_bundle=settings.ca_bundle,
            token_file=settings.token_file,
            ttl_s=settings.workload_cert_ttl_s,
        )
        self.trust_domain = self.boot.trust_domain
        self.watcher = (
            StoreWatcher(FileStore(settings.cluster, settings.config)) if settings.config else None
        )
        self.config: ConfigClient | None = None
        self._crl: str | None = None  # the CA's CRL from the config (RELIABILITY I-9)
        self._config_task: asyncio.Task[None] | None = None
        self.manager: CertificateManager | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.cert_gauge = Gauge(
            "ambientmesh_workload_certificates",
            "Identities held, by state",
            ["state"],
            registry=self.registry,
        )
        self.proxy_metrics = ProxyMetrics(self.registry)
        self.config_metrics = ClientMetrics(self.registry)
        self.snapshot: Snapshot | None = None
        self.proxy: Proxy | None = None
        self._last_status: dict[str, Any] = {}
        self.memory = overload.sampler(settings.memory_limit_bytes)
        limit = settings.memory_limit_bytes
        log.info(
            "memory shedding: %s",
            f"RSS against {limit >> 20} MiB" if limit else "against the cgroup's limit, if any",
        )

    def waiting_for(self) -> list[str]:
        pending = []
        if self.manager is None:
            pending.append("trust bundle (controller CA not started yet)")
        if self.snapshot is None:
            pending.append("config snapshot" + (" from the controller" if self.config else ""))
        if self.proxy is None:
            pending.append("listeners")
        return pending

    def _start_clients(self) -> None:
        """CA and config clients, once the controller's trust bundle exists."""
        if self.manager is not None or not self.boot.ready():
            return
        controller = self.settings.controller
        self.manager = CertificateManager(self.boot.ca_client(controller), ttl_s=self.boot.ttl_s)
        if self.watcher is None:
            self.config = self.boot.config_client(
                controller,
                on_update=self.on_config,
                metrics=self.config_metrics,
                on_reject=self.on_rejected_config,
            )
            self._config_task = asyncio.create_task(self.config.run())

    def on_config(self, resources: dict[str, Resource], version: int) -> None:
        """A validated config version: the new snapshot, then re-judge open connections."""
        self._apply(workloads.build(resources, self.settings.node, self.trust_domain, version))
        self._crl = resources[CRL_KEY]["pem"] if CRL_KEY in resources else None
        self._follow_crl()

    def _follow_crl(self) -> None:
        if self.manager is not None:
            revocation.follow(self._crl, self.manager, self.config_metrics.crl_refused.inc)

    def on_rejected_config(self, update: dict[str, Any]) -> None:
        """F-11: the policies a rejected update carried are unknown, so inbound to the
        workloads they could select is refused until an update is accepted."""
        if self.snapshot is None:
            return
        touched = policy_namespaces(update, ROOT_NAMESPACE)
        if touched:
            log.warning("failing closed for inbound to namespaces %s", ", ".join(sorted(touched)))
            self._apply(replace(self.snapshot, unconverged=self.snapshot.unconverged | touched))

    def _apply(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if self.proxy is not None and (closed := self.proxy.recheck_policies()):
            log.info("closed %d connections that policy now denies", closed)

    def _sync(self) -> None:
        if self.watcher is not None and self.watcher.poll():
            self._apply(
                workloads.from_objects(self.watcher.current, self.settings.node, self.trust_domain)
            )
        self._start_clients()
        self._follow_crl()  # new issuers; a CRL past its nextUpdate
        if self.manager is None or self.snapshot is None:
            return
        local = self.snapshot.local_workloads()
        self.manager.track({w.identity for w in local if w.enrolled})
        states = [c["state"] for c in self.manager.dump()]
        for state in ("Available", "Initializing", "Unavailable"):
            self.cert_gauge.labels(state=state).set(states.count(state))

    def handover_ready(self) -> bool:
        """Ready, and serving every local enrolled pod: its certificate held and its HBONE
        listener bound (judged on the snapshot itself, which may have arrived a moment ago)."""
        if self.waiting_for() or self.manager is None or self.proxy is None:
            return False
        snap = self.snapshot
        assert snap is not None
        local = [w for w in snap.local_workloads() if w.enrolled and w.ip not in snap.ambiguous]
        return all(
            self.manager.current(w.identity) is not None and w.ip in self.proxy.hbone for w in local
        )

    def write_status(self) -> None:
        if self.settings.status_file is None:
            return
        status = {
            "pid": os.getpid(),
            "ready": not self.waiting_for(),
            "handoverReady": self.handover_ready(),
            "waitingFor": self.waiting_for(),
        }
        if status != self._last_status:
            self._last_status = status
            tmp = self.settings.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            tmp.replace(self.settings.status_file)

    def config_dump(self) -> dict[str, Any]:
        return {
            "node": self.settings.node,
            "trustDomain": self.trust_domain,
            "configVersion": self.snapshot.revision if self.snapshot else None,
            "configSource": "static" if self.watcher else "controller",
            "configError": self.config.last_error if self.config else "",
            "failClosedNamespaces": sorted(self.snapshot.unconverged) if self.snapshot else [],
            "workloads": workload_dump(self.snapshot),
            "services": sorted(
                {s.host for s in self.snapshot.by_vip.values()} if self.snapshot else set()
            ),
            "certificates": self.manager.dump() if self.manager else [],
            "policies": [p.key for p in self.snapshot.policies] if self.snapshot else [],
            "activeConnections": len(self.proxy.active) if self.proxy else 0,
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
            await http1.serve(self.admin, "127.0.0.1", ports.ZTUNNEL_ADMIN, reuse_port=True),
            await http1.serve(self.ready, "0.0.0.0", ports.ZTUNNEL_READINESS, reuse_port=True),  # noqa: S104
            await http1.serve(self.metrics, "0.0.0.0", ports.ZTUNNEL_METRICS, reuse_port=True),  # noqa: S104
        ]
        log.info(
            "ztunnel for %s/%s: admin 127.0.0.1:%d, readiness :%d, metrics :%d",
            self.settings.cluster,
            self.settings.node,
            ports.ZTUNNEL_ADMIN,
            ports.ZTUNNEL_READINESS,
            ports.ZTUNNEL_METRICS,
        )
        while not stop.is_set():
            self._sync()
            if self.proxy is None and self.manager is not None and self.snapshot is not None:
                # Bind only with config: a SO_REUSEPORT sibling would otherwise hand us
                # connections we could only refuse.
                self.proxy = Proxy(
                    self.settings.proxy, lambda: self.snapshot, self.manager, self.proxy_metrics
                )
                await self.proxy.start()
                log.info("proxy listening: %s", self.proxy.ports)
            if self.proxy is not None:
                await self.proxy.sync_hbone_listeners()
                self.proxy.on_memory(self.memory())
            self.write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        if self.proxy is not None:
            log.info(
                "draining %d connections for up to %.1fs",
                len(self.proxy.active),
                self.settings.drain_s,
            )
            await self.proxy.drain(self.settings.drain_s)
        for server in servers:
            server.close()
        if self._config_task is not None:
            self._config_task.cancel()
        if self.manager:
            await self.manager.close()


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m ztunnel.main")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--node", required=True)
    parser.add_argument("--controller", required=True, help="host[:port] of the controller")
    parser.add_argument(
        "--socks-port", type=int, default=ports.ZTUNNEL_SOCKS5, help="SOCKS5 entry (0: off)"
    )
    parser.add_argument("--drain", type=float, default=5.0, help="drain deadline after SIGTERM")
    parser.add_argument("--status-file", type=Path, default=None)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="static config: a Kubernetes List YAML instead of the store",
    )
    parser.add_argument(
        "--memory-limit-mib",
        type=int,
        default=0,
        help="shed load as RSS nears this (default: the container's cgroup memory limit)",
    )
    parser.add_argument(
        "--hbone-header-timeout",
        type=float,
        default=hbone.HEADER_TIMEOUT_S,
        help="seconds an HBONE peer has for its first request and for any header block",
    )
    parser.add_argument(
        "--hbone-stall-timeout",
        type=float,
        default=hbone.STALL_TIMEOUT_S,
        help="seconds a tunnel may go without its peer taking a byte it has for it",
    )
    add_kubernetes_flags(parser)
    parser.add_argument(
        "--no-transparent",
        action="store_true",
        help="plain listeners and dials (tests without CAP_NET_ADMIN)",
    )
    args = parser.parse_args(argv)
    check_kubernetes_flags(parser, args)
    proxy = ProxySettings(
        socks_port=args.socks_port,
        transparent=not args.no_transparent,
        original_source=not args.no_transparent,
        limits=hbone.Limits(
            header_timeout_s=args.hbone_header_timeout, stall_timeout_s=args.hbone_stall_timeout
        ),
    )
    return Settings(
        cluster=args.cluster,
        node=args.node,
        controller=args.controller,
        proxy=proxy,
        drain_s=args.drain,
        status_file=args.status_file,
        config=args.config,
        token_file=args.token_file,
        ca_bundle=args.ca_bundle,
        trust_domain=args.trust_domain,
        workload_cert_ttl_s=args.workload_cert_ttl,
        memory_limit_bytes=args.memory_limit_mib << 20,
    )


async def amain(settings: Settings) -> int:
    return await run_until_signalled(Ztunnel(settings).run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    cap = fdlimit.cap_for_this_process(settings.proxy.max_connections)  # RELIABILITY L-1
    heap.keep_freed()  # buffers reused without faulting their pages in again (common.heap)
    settings = replace(settings, proxy=replace(settings.proxy, max_connections=cap))
    return uvloop.run(amain(settings))  # never asyncio's TLS transport on the data path (PERF.md)


if __name__ == "__main__":
    sys.exit(main())
