"""The controller process: CA (HTTPS/1.1) and config stream (HTTP/2, by ALPN) on 15012;
metrics and `/debug/proxies` on 15014.

Local mode: `python -m controller.main --cluster C` watches the cluster's store through the local
cluster source, and reads node bootstrap tokens and CA material from the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import ports
from api.ambient import waypoint_of
from api.objects import Obj
from api.spiffe import controller_identity
from common import http1, tls
from common.signals import run_until_signalled
from controller.ca import authority
from controller.ca.crl import CRL_FILE, CrlMetrics, CrlSource
from controller.ca.nodeauth import Authenticator, LocalTokens
from controller.ca.refusal import Refusal
from controller.ca.service import CaMetrics, CaService
from controller.ca.tokenreview import TokenReviewer
from controller.config.compile import Proxy
from controller.config.server import ConfigMetrics, ConfigServer
from controller.status import StatusWriter
from localcluster import naming
from localcluster.store import ClusterStore
from localcluster.topology import node_name
from sources import select
from sources.base import Cache, ClusterSource, SourceError
from sources.kube import KubeSource
from sources.local import LocalSource

log = logging.getLogger("controller")

SERVING_CERT_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class Settings:
    cluster: str
    """Local cluster whose store, tokens and CA this controller serves."""
    listen: str = "0.0.0.0"  # noqa: S104 - the controller serves every node
    """Address for 15012 and 15014."""
    ca_dir: Path | None = None
    """Plugged-in CA material (Istio cacerts layout); default: a local root in the state dir."""
    ca_port: int = ports.CONTROLLER
    """CA (and, next, config) port; 0 picks a free one (tests)."""
    metrics_port: int = ports.CONTROLLER_METRICS
    """Prometheus port; 0 picks a free one (tests)."""
    source: ClusterSource | None = None
    """Where cluster objects come from; default: the local cluster's store."""
    kubernetes: KubernetesMode | None = None
    """Set when running on Kubernetes: no local store, facts from the command line."""


@dataclass(frozen=True)
class KubernetesMode:
    trust_domain: str
    workload_cert_ttl_s: int
    authenticator: Authenticator


def now() -> datetime:
    return datetime.now(UTC)


def _local_mode(settings: Settings) -> tuple[KubernetesMode, authority.CaMaterial]:
    """The local cluster's facts: its store's trust domain and TTL, its node tokens, and a CA
    generated into (or plugged from) its state directory, whose root ztunnels read."""
    store = ClusterStore(settings.cluster)
    info = store.info()
    material = (
        authority.load_plugged(settings.ca_dir)
        if settings.ca_dir
        else authority.load_or_create(store.ca_dir, info.trust_domain, now())
    )
    authority.publish_bundle(store.ca_dir, material)
    tokens = {}
    for i in range(1, info.nodes + 1):
        path = store.node_token_path(node_name(i))
        if path.exists():
            tokens[node_name(i)] = path.read_text().strip()
    key = store.pod_token_key_path
    authn = LocalTokens(tokens, key.read_text().strip().encode() if key.exists() else None)
    facts = KubernetesMode(info.trust_domain, info.workload_cert_ttl_s, authn)
    return facts, material


class Controller:
    def __init__(self, settings: Settings) -> None:
        if settings.kubernetes is not None:
            if settings.ca_dir is None or settings.source is None:
                raise authority.CaMaterialError("Kubernetes mode needs --ca-dir and a source")
            facts, self.material = settings.kubernetes, authority.load_plugged(settings.ca_dir)
            ca_dir = settings.ca_dir
        else:
            facts, self.material = _local_mode(settings)
            ca_dir = settings.ca_dir or ClusterStore(settings.cluster).ca_dir
        self.trust_domain = facts.trust_domain
        self.tokens = facts.authenticator
        self.source = settings.source or LocalSource(ClusterStore(settings.cluster))
        self.cache = Cache(self.source.kinds)
        self.registry = CollectorRegistry()
        if isinstance(self.source, KubeSource):
            self.source.metrics.register(self.registry)
        writer = (
            StatusWriter(self.source, self.registry)
            if isinstance(self.source, KubeSource)
            else None
        )
        self.config = ConfigServer(
            self.cache,
            self._authenticate,
            ConfigMetrics(self.registry),
            after_compile=writer.write if writer else None,
        )
        self.crl = CrlSource(ca_dir / CRL_FILE, self.material, CrlMetrics(self.registry))
        self.ca = CaService(
            self.material,
            facts.trust_domain,
            self.tokens,
            self._pods,
            CaMetrics(self.registry),
            max_ttl=timedelta(seconds=facts.workload_cert_ttl_s),
            clock=now,
        )
        self.settings = settings
        self.ports: dict[str, int] = {}
        self.started = asyncio.Event()

    def _pods(self) -> list[Obj]:
        current = self.cache.current()
        return current.list("Pod") if current else []  # not synced: no pod is known yet

    async def _authenticate(self, headers: dict[str, str]) -> Proxy | None:
        """A node's ztunnel, or a waypoint's pod (a pod with the Gateway label Istio puts on
        waypoint pods); any other pod gets no config (it would learn the whole mesh)."""
        await self.tokens.review(headers.get("authorization"))
        try:
            caller = self.tokens.authenticate(headers.get("authorization"))
        except Refusal:
            return None
        if caller.node:
            return Proxy("ztunnel", caller.node)
        pod = next((p for p in self._pods() if p["metadata"].get("uid") == caller.pod_uid), None)
        gateway = waypoint_of(pod) if pod else None
        if pod is None or gateway is None:
            return None
        return Proxy("waypoint", f"{pod['metadata']['namespace']}/{gateway}")

    def _serving_pair(self) -> tuple[list[str], bytes]:
        key = authority.new_key()
        leaf = authority.sign_leaf(
            self.material,
            key.public_key(),
            controller_identity(self.trust_domain),
            SERVING_CERT_TTL,
            now(),
        )
        return [authority.pem(leaf), *self.material.chain_pem()], authority.key_pem(key)

    async def handle_ca(self, request: http1.Request) -> http1.Response:
        if (request.method, request.target) == ("POST", "/v1/certificates"):
            await self.tokens.review(request.headers.get("authorization"))
            status, body = self.ca.sign(request.headers.get("authorization"), request.body)
            return http1.Response(status, _json(body))
        if request.target == "/healthz":
            return http1.Response(HTTPStatus.OK, b"ok\n", "text/plain")
        return http1.Response(HTTPStatus.NOT_FOUND, b'{"message": "not found"}')

    async def handle_metrics(self, request: http1.Request) -> http1.Response:
        if request.target == "/debug/proxies":  # istiod serves its debug views on 15014 too
            return http1.Response(HTTPStatus.OK, _json(self.config.status()))
        if request.target != "/metrics":
            return http1.Response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        return http1.Response(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    async def run(self, stop: asyncio.Event) -> None:
        chain, key = self._serving_pair()
        ctx = tls.server_context(chain, key, alpn=["h2", "http/1.1"])
        ca_server = await http1.serve(
            self.handle_ca,
            self.settings.listen,
            self.settings.ca_port,
            tls=ctx,
            alpn={"h2": self.config.serve},
        )
        tasks = [
            asyncio.create_task(self.source.run(self.cache)),
            asyncio.create_task(self.config.run()),
            asyncio.create_task(self.crl.run(self.config.set_crl)),
        ]
        metrics = await http1.serve(
            self.handle_metrics, self.settings.listen, self.settings.metrics_port
        )
        self.ports = {
            "ca": ca_server.sockets[0].getsockname()[1],
            "metrics": metrics.sockets[0].getsockname()[1],
        }
        self.started.set()
        log.info(
            "controller for cluster %s: CA on :%d, metrics on :%d (trust domain %s)",
            self.settings.cluster,
            self.ports["ca"],
            self.ports["metrics"],
            self.trust_domain,
        )
        refresh = SERVING_CERT_TTL.total_seconds() / 2
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), refresh)
            except TimeoutError:
                tls.load_identity(ctx, *self._serving_pair())  # renewed at half-life
        for task in tasks:
            task.cancel()
        self.config.shutdown()
        ca_server.close()
        metrics.close()
        await ca_server.wait_closed()
        await metrics.wait_closed()


def _json(body: object) -> bytes:
    return json.dumps(body).encode() + b"\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m controller.main")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--listen", default="0.0.0.0")  # noqa: S104
    parser.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        help="plug-in CA (ca-cert.pem, ca-key.pem[, cert-chain.pem, root-cert.pem])",
    )
    kube = parser.add_argument_group("Kubernetes mode (with --source kubernetes)")
    kube.add_argument("--trust-domain", default="cluster.local")
    kube.add_argument("--workload-cert-ttl", type=int, default=86400, help="seconds")
    kube.add_argument("--system-namespace", default="ambientmesh-system")
    kube.add_argument(
        "--authn",
        choices=("nodetoken", "tokenreview"),
        default="nodetoken",
        help="how ztunnels prove their node: local bootstrap tokens, or Kubernetes TokenReview",
    )
    select.add_arguments(parser)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    source = await select.open_source(args, args.cluster)
    kubernetes = None
    if isinstance(source, KubeSource):
        if args.authn == "nodetoken":
            raise SourceError("on Kubernetes ztunnels authenticate with --authn tokenreview")
        authn = TokenReviewer(source.api, args.system_namespace)
        kubernetes = KubernetesMode(args.trust_domain, args.workload_cert_ttl, authn)
    settings = Settings(
        args.cluster, args.listen, args.ca_dir, source=source, kubernetes=kubernetes
    )
    return await run_until_signalled(Controller(settings).run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return asyncio.run(amain(args))
    except (authority.CaMaterialError, SourceError, OSError) as exc:
        log.error("cannot start: %s", exc)  # noqa: TRY400 - one line; no traceback for config
        return 1


if __name__ == "__main__":
    sys.exit(main())
