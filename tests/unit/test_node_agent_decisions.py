"""The node agent's pure decisions: which pods to capture, and which pod is the node's ztunnel."""

from __future__ import annotations

from typing import Any

from localcluster.store import ObjectSet
from node_agent.agent import desired_pods
from node_agent.discover import ztunnel_ip
from sources.base import ref

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def pod(name: str, ns: str, node: str, ip: str | None, *, host: bool = False, **labels: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": name, "labels": labels},
        "spec": {"nodeName": node, "hostNetwork": host},
        "status": {"podIP": ip} if ip else {},
    }


def objects(*objs: Any) -> ObjectSet:
    return ObjectSet({ref(o): o for o in objs}, 1)


CLUSTER = objects(
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": AMBIENT}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ambientmesh-system"}},
    pod("web", "app", "n1", "10.0.1.5"),
    pod("other-node", "app", "n2", "10.0.2.5"),
    pod("pending", "app", "n1", None),
    pod("hostnet", "app", "n1", "192.168.0.1", host=True),
    pod("zt", "ambientmesh-system", "n1", "10.0.1.2", app="ztunnel"),
    pod("zt2", "ambientmesh-system", "n2", "10.0.2.2", app="ztunnel"),
)


def test_only_this_nodes_enrolled_pods_with_an_ip_and_never_host_network() -> None:
    assert sorted(desired_pods(CLUSTER, "n1")) == ["10.0.1.5"]


def test_the_nodes_ztunnel_is_found_by_label_and_node() -> None:
    assert ztunnel_ip(CLUSTER, "n1", "ambientmesh-system") == "10.0.1.2"
    assert ztunnel_ip(CLUSTER, "n3", "ambientmesh-system") is None
    assert ztunnel_ip(CLUSTER, "n1", "app") is None
