"""Address plan and names: unique, unambiguous, within kernel limits."""

from __future__ import annotations

import pytest

from api.ambient import enrolled
from localcluster import naming
from localcluster.topology import allocate_pod_ip, pick_node, plan_node, plan_nodes


def test_node_plan_looks_like_kind() -> None:
    plan = plan_node(2)
    assert (plan.name, plan.node_ip, plan.pod_cidr) == ("node2", "172.18.0.3", "10.244.2.0/24")
    assert (plan.gateway_ip, plan.ztunnel_ip) == ("10.244.2.1", "10.244.2.2")
    assert plan.pod_ips()[0] == "10.244.2.3"
    assert plan.pod_ips()[-1] == "10.244.2.254"


@pytest.mark.parametrize("count", [0, 251, -1])
def test_node_count_bounds(count: int) -> None:
    with pytest.raises(ValueError, match="--nodes"):
        plan_nodes(count)


def test_allocate_and_pick() -> None:
    node = plan_node(1)
    assert allocate_pod_ip(node, {"10.244.1.3", "10.244.1.5"}) == "10.244.1.4"
    nodes = plan_nodes(3)
    assert pick_node(nodes, {"node1": 1, "node2": 0, "node3": 0}).name == "node2"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("ambient", True),
        ("c2", True),
        ("tst0a1b2c", True),
        ("a" * 16, True),
        ("a" * 17, False),
        ("my-cluster", False),
        ("2c", False),
        ("Dev", False),
        ("", False),
    ],
)
def test_cluster_names(name: str, ok: bool) -> None:
    assert (naming.check_cluster_name(name) is None) is ok


def test_netns_names_are_unambiguous() -> None:
    node = naming.node_netns("c", "node1")
    zt = naming.ztunnel_netns("c", "node1")
    pod = naming.pod_netns("c", "node1", "ztunnel")  # a namespace called like a node
    assert len({node, zt, pod, naming.underlay_netns("c")}) == 4
    assert "." in pod and "." not in node + zt
    assert {naming.cluster_of_netns(n) for n in (node, zt, pod)} == {"c"}
    assert naming.cluster_of_netns("am-c2-node1") == "c2"
    assert naming.cluster_of_netns("other-ns") is None
    assert naming.cluster_of_netns("am-Bad-node1") is None


def test_long_pod_names_stay_short_and_distinct() -> None:
    a = naming.pod_netns("c", "ns", "x" * 253)
    b = naming.pod_netns("c", "ns", "x" * 252 + "y")
    assert len(a) <= 200 and len(b) <= 200 and a != b


def test_host_veth_fits_ifnamsiz() -> None:
    assert len(naming.host_veth("0f3c2b9e-uid")) == naming.IFNAME_MAX


def _obj(labels: dict[str, str]) -> dict[str, object]:
    return {"metadata": {"labels": labels}}


@pytest.mark.parametrize(
    ("pod_labels", "ns_labels", "expected"),
    [
        ({}, {}, False),
        ({}, {"istio.io/dataplane-mode": "ambient"}, True),
        ({"istio.io/dataplane-mode": "none"}, {"istio.io/dataplane-mode": "ambient"}, False),
        ({"istio.io/dataplane-mode": "ambient"}, {}, True),
        ({}, {"istio.io/dataplane-mode": "sidecar"}, False),
    ],
)
def test_enrollment(pod_labels: dict[str, str], ns_labels: dict[str, str], expected: bool) -> None:
    assert enrolled(_obj(pod_labels), _obj(ns_labels)) is expected
