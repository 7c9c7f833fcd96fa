"""The node agent's pure decisions: which pods to capture, and which pod is the node's ztunnel."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster.store import ObjectSet
from node_agent.agent import desired_pods
from node_agent.discover import ztunnel_ip
from node_agent.main import readiness
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


@pytest.mark.parametrize(
    ("ready", "problem", "unavailable", "expected"),
    [
        (True, "", None, (True, "ready")),
        (False, "", None, (False, "not ready: reconciling")),
        (False, "bpffs not mounted", None, (False, "not ready: bpffs not mounted")),
        # An API server restart is ridden out ...
        (True, "", (29.0, "Pod: HTTP 503"), (True, "ready")),
        # ... a longer outage is reported; the datapath stays as it was.
        (
            True,
            "",
            (31.0, "Pod: HTTP 503"),
            (
                False,
                "not ready: Kubernetes API unreachable for 31s (Pod: HTTP 503); "
                "the datapath keeps its last state",
            ),
        ),
        # A datapath problem is said first.
        (False, "no bpffs", (99.0, "Pod: refused"), (False, "not ready: no bpffs")),
    ],
)
def test_readiness(
    ready: bool,
    problem: str,
    unavailable: tuple[float, str] | None,
    expected: tuple[bool, str],
) -> None:
    assert readiness(ready, problem, unavailable) == expected
