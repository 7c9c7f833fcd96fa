"""How a proxy (ztunnel or waypoint) reaches its controller: trust domain, certificate TTL, the
trust bundle and the bearer token, from the local cluster's state directory or from the four
Kubernetes flags; and the CA and config clients built from them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import ports
from api.spiffe import controller_identity
from localcluster.store import ClusterStore
from ztunnel.config.client import ConfigClient
from ztunnel.identity.caclient import CaClient

DEFAULT_TTL_S = 86400  # Istio's default workload certificate lifetime


def add_kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    kube = parser.add_argument_group("Kubernetes mode (all four together)")
    kube.add_argument("--token-file", type=Path, default=None)
    kube.add_argument("--ca-bundle", type=Path, default=None)
    kube.add_argument("--trust-domain", default=None)
    kube.add_argument("--workload-cert-ttl", type=int, default=None, help="seconds")


def check_kubernetes_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    flags = (args.token_file, args.ca_bundle, args.trust_domain, args.workload_cert_ttl)
    if any(flags) and not all(flags):
        parser.error(
            "--token-file, --ca-bundle, --trust-domain and --workload-cert-ttl go together"
        )


@dataclass(frozen=True)
class Bootstrap:
    trust_domain: str
    ttl_s: int
    bundle: Path
    token: Path

    @classmethod
    def resolve(
        cls,
        cluster: str,
        local_token: Callable[[ClusterStore], Path],
        *,
        trust_domain: str | None,
        ca_bundle: Path | None,
        token_file: Path | None,
        ttl_s: int | None,
    ) -> Bootstrap:
        """Kubernetes mode when `trust_domain` is given (with the other flags); else the local
        cluster's store, with the token `local_token` names (a node's or a pod's)."""
        if trust_domain is None:
            store = ClusterStore(cluster)
            info = store.info()
            bundle = store.ca_dir / "root-cert.pem"
            return cls(info.trust_domain, info.workload_cert_ttl_s, bundle, local_token(store))
        assert ca_bundle is not None
        assert token_file is not None
        return cls(trust_domain, ttl_s or DEFAULT_TTL_S, ca_bundle, token_file)

    def ready(self) -> bool:
        """The controller's trust bundle exists (the CA may not have started yet)."""
        return self.bundle.exists()

    def _link(self, controller: str) -> dict[str, Any]:
        host, _, port_s = controller.partition(":")
        path = self.token

        def token() -> str:
            return path.read_text().strip()  # re-read: a projected token rotates

        return {
            "host": host,
            "port": int(port_s or ports.CONTROLLER),
            "token": token,
            "bundle_pem": [self.bundle.read_text()],
            "controller": controller_identity(self.trust_domain),
        }

    def ca_client(self, controller: str) -> CaClient:
        return CaClient(**self._link(controller))

    def config_client(self, controller: str, **handlers: Any) -> ConfigClient:
        """`handlers`: on_update, metrics, on_reject (ConfigClient's)."""
        return ConfigClient(**self._link(controller), **handlers)
