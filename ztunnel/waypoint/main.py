"""The waypoint process: one pod of a Gateway of class `istio-waypoint`, running as that pod's
own identity (its ServiceAccount's), with config streamed from the controller as
`kind=waypoint`.

Ports (Istio's): 15008 HBONE, 15020 `/metrics`, 15021 `/healthz/ready`. Nothing is served until
the first config snapshot and the certificate exist (fail closed). SIGTERM: GOAWAY to clients,
then open requests get `--drain` seconds.
Local mode reads the pod token the cluster wrote for this pod; Kubernetes mode a projected
ServiceAccount token (audience `ambientmesh`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

import uvloop
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import ports
from api.meshconfig import CRL_KEY, Resource
from api.spiffe import SpiffeId
from common import fdlimit, heap, http1
from common.signals import run_until_signalled
from localcluster import naming
from ztunnel.config.bootstrap import Bootstrap, add_kubernetes_flags, check_kubernetes_flags
from ztunnel.config.client import ClientMetrics
from ztunnel.identity import revocation
from ztunnel.identity.manager import CertificateManager
from ztunnel.metrics import ProxyMetrics
from ztunnel.proxy import overload
from ztunnel.waypoint import state as waypoint_state
from ztunnel.waypoint.metrics import RequestMetrics
from ztunnel.waypoint.proxy import WaypointProxy, WaypointSettings
from ztunnel.waypoint.state import WaypointState

log = logging.getLogger("waypoint")

POLL_S = 0.2


@dataclass(frozen=True)
class Settings:
    gateway: str
    namespace: str
    pod: str
    service_account: str
    controller: str
    cluster: str = naming.DEFAULT_CLUSTER
    token_file: Path | None = None  # Kubernetes mode: these four together
    ca_bundle: Path | None = None
    trust_domain: str | None = None
    workload_cert_ttl_s: int | None = None
    proxy: WaypointSettings = field(default_factory=WaypointSettings)
    drain_s: float = 5.0
    access_log: bool = False
    memory_limit_bytes: int = 0  # 0: the cgroup's limit, if any (ztunnel.proxy.overload)


class Waypoint:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.boot = Bootstrap.resolve(
            settings.cluster,
            lambda store: store.pod_token_path(settings.namespace, settings.pod),
            trust_domain=settings.trust_domain,
            ca_bundle=settings.ca_bundle,
            token_file=settings.token_file,
            ttl_s=settings.workload_cert_ttl_s,
        )
        self.trust_domain = self.boot.trust_domain
        self.identity = SpiffeId(self.trust_domain, settings.namespace, settings.service_account)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.memory = overload.sampler(settings.memory_limit_bytes)
        self.request_metrics = RequestMetrics(self.registry, access_log=settings.access_log)
        self.tcp_metrics = ProxyMetrics(self.registry)
        self.config_metrics = ClientMetrics(self.registry)
        self.state: WaypointState | None = None
        self.manager: CertificateManager | None = None
        self.proxy: WaypointProxy | None = None
        self._config_task: asyncio.Task[None] | None = None
        self._crl: str | None = None  # the CA's CRL from the config (RELIABILITY I-9)

    def on_config(self, resources: dict[str, Resource], version: int) -> None:
        s = self.settings
        self.state = waypoint_state.build(
            resources, s.namespace, s.gateway, self.trust_domain, version
        )
        self._crl = resources[CRL_KEY]["pem"] if CRL_KEY in resources else None
        self._follow_crl()
        if self.proxy is not None and (closed := self.proxy.recheck_policies()):
            log.info("closed %d connections that policy now denies", closed)

    def _follow_crl(self) -> None:
        if self.manager is not None:
            revocation.follow(self._crl, self.manager, self.config_metrics.crl_refused.inc)

    def _start_clients(self) -> None:
        if self.manager is not None or not self.boot.ready():
            return
        controller = self.settings.controller
        self.manager = CertificateManager(self.boot.ca_client(controller), ttl_s=self.boot.ttl_s)
        self.manager.track({self.identity})
        config = self.boot.config_client(
            controller, on_update=self.on_config, metrics=self.config_metrics
        )
        self._config_task = asyncio.create_task(config.run())

    def waiting_for(self) -> list[str]:
        pending = []
        if self.state is None:
            pending.append("config snapshot from the controller")
        if self.proxy is None or self.proxy.server is None:
            pending.append(f"certificate for {self.identity}")
        return pending

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
        any_ip = "0.0.0.0"  # noqa: S104 - the pod's own netns
        servers = [
            await http1.serve(self.ready, any_ip, ports.ZTUNNEL_READINESS),
            await http1.serve(self.metrics, any_ip, ports.ZTUNNEL_METRICS),
        ]
        log.info(
            "waypoint %s/%s as %s", self.settings.namespace, self.settings.gateway, self.identity
        )
        while not stop.is_set():
            self._start_clients()
            self._follow_crl()  # new issuers; a CRL past its nextUpdate
            if self.proxy is None and self.manager is not None and self.state is not None:
                self.proxy = WaypointProxy(
                    self.settings.proxy,
                    lambda: self.state,
                    self.manager,
                    self.identity,
                    metrics=self.request_metrics,
                    tcp_metrics=self.tcp_metrics,
                )
            if self.proxy is not None:
                await self.proxy.sync()
                self.proxy.on_memory(self.memory())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        if self.proxy is not None:
            await self.proxy.close(self.settings.drain_s)
        for server in servers:
            server.close()
        if self._config_task is not None:
            self._config_task.cancel()
        if self.manager is not None:
            await self.manager.close()


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m ztunnel.waypoint.main")
    parser.add_argument("--gateway", required=True, help="the Gateway this pod serves")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    parser.add_argument("--pod", default=os.environ.get("POD_NAME", ""))
    parser.add_argument("--service-account", default=os.environ.get("SERVICE_ACCOUNT", ""))
    parser.add_argument("--controller", required=True, help="host[:port] of the controller")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off by default, as Istio)"
    )
    parser.add_argument(
        "--memory-limit-mib",
        type=int,
        default=0,
        help="shed load as RSS nears this (default: the container's cgroup memory limit)",
    )
    add_kubernetes_flags(parser)
    args = parser.parse_args(argv)
    for flag in ("namespace", "pod", "service_account"):
        if not getattr(args, flag):
            parser.error(f"--{flag.replace('_', '-')} (or its environment variable) is required")
    check_kubernetes_flags(parser, args)
    return Settings(
        gateway=args.gateway,
        namespace=args.namespace,
        pod=args.pod,
        service_account=args.service_account,
        controller=args.controller,
        cluster=args.cluster,
        token_file=args.token_file,
        ca_bundle=args.ca_bundle,
        trust_domain=args.trust_domain,
        workload_cert_ttl_s=args.workload_cert_ttl,
        drain_s=args.drain,
        access_log=args.access_log,
        memory_limit_bytes=args.memory_limit_mib << 20,
    )


async def amain(settings: Settings) -> int:
    return await run_until_signalled(Waypoint(settings).run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    cap = fdlimit.cap_for_this_process(settings.proxy.max_tunnels)  # RELIABILITY L-1
    heap.keep_freed()  # buffers reused without faulting their pages in again (common.heap)
    settings = replace(settings, proxy=replace(settings.proxy, max_tunnels=cap))
    return uvloop.run(amain(settings))


if __name__ == "__main__":
    sys.exit(main())
