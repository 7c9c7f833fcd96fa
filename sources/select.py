"""Choosing a cluster source from a component's command line (`--source`, `--kubeconfig`)."""

from __future__ import annotations

import argparse

from localcluster.store import ClusterStore
from sources import kube
from sources.base import ClusterSource
from sources.local import LocalSource


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=("local", "kubernetes"),
        default="local",
        help="where cluster objects come from: the local store, or the Kubernetes API",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="with --source kubernetes: default in-cluster"
    )


async def open_source(
    args: argparse.Namespace, cluster: str, *, node: str | None = None
) -> ClusterSource:
    """The controller's source (every resource), or a node agent's (`node`: its pods only)."""
    if args.source == "local":
        return LocalSource(ClusterStore(cluster))
    api = await kube.api_client(args.kubeconfig)
    if node is None:
        return kube.KubeSource(api, field_selectors=kube.CONTROLLER_SELECTORS)
    return kube.KubeSource(
        api, kube.node_agent_resources(), field_selectors={"Pod": f"spec.nodeName={node}"}
    )
