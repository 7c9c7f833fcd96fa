"""Cluster objects → mesh config, each proxy's share, and the diff between versions."""

from __future__ import annotations

from typing import Any

from controller.config.compile import Proxy, compile_mesh, diff, view
from localcluster.store import ObjectSet
from sources.base import ref


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, node: str, ip: str | None, ns_: str = "demo", **labels: str) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns_, "uid": f"uid-{name}", "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": name},
        "status": {"podIP": ip} if ip else {},
    }
    return obj


def policy(name: str, ns_: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns_},
        "spec": spec,
    }


def objects(*objs: dict[str, Any]) -> ObjectSet:
    return ObjectSet({ref(o): o for o in objs}, 1)


CLUSTER = objects(
    ns("demo", **{"istio.io/dataplane-mode": "ambient"}),
    ns("other"),
    pod("a", "node1", "10.244.1.3", app="web"),
    pod("b", "node2", "10.244.2.3", app="web"),
    pod("pending", "node1", None, app="web"),
    pod("c", "node2", "10.244.2.4", "other", app="db"),
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}, {"port": 81, "targetPort": "http"}],
        },
    },
    policy("deny-all", "other", action="DENY", rules=[{}]),
    policy("l4", "demo", rules=[{"from": [{"source": {"namespaces": ["demo"]}}]}]),
    policy("l7", "demo", targetRefs=[{"kind": "Service", "name": "web"}]),
    policy("mesh", "istio-system"),
)


def test_workloads_carry_identity_facts_and_enrollment() -> None:
    mesh = compile_mesh(CLUSTER).resources
    a = mesh["workload/uid-a"]
    assert (a["ip"], a["node"], a["serviceAccount"], a["enrolled"]) == (
        "10.244.1.3",
        "node1",
        "a",
        True,
    )
    assert mesh["workload/uid-c"]["enrolled"] is False
    assert "workload/uid-pending" not in mesh, "a pod without an IP is not addressable"


def test_service_endpoints_are_ready_selected_pods_of_its_namespace() -> None:
    svc = compile_mesh(CLUSTER).resources["service/demo/web"]
    assert svc["vips"] == ["10.96.0.10"]
    assert svc["endpoints"] == ["uid-a", "uid-b"]
    assert svc["ports"] == [{"port": 80, "targetPort": 8080, "protocol": ""}], "named skipped"


def test_not_ready_pod_is_no_endpoint() -> None:
    unready = pod("a", "node1", "10.244.1.3", app="web")
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    svc = compile_mesh(objects(*(o for o in CLUSTER.list("Service")), unready)).resources
    assert svc["service/demo/web"]["endpoints"] == []


def test_ztunnel_view_has_all_addresses_but_only_its_namespaces_policies() -> None:
    mesh = compile_mesh(CLUSTER)
    node1 = view(mesh, Proxy("ztunnel", "node1"))
    assert {"workload/uid-a", "workload/uid-b", "workload/uid-c"} <= set(node1)
    assert node1["workload/uid-a"]["labels"] == {"app": "web"}
    assert node1["workload/uid-b"]["labels"] == {}, "remote labels are not needed"
    policies = sorted(k for k in node1 if k.startswith("policy/"))
    assert policies == ["policy/demo/l4", "policy/istio-system/mesh"], "l7 is the waypoint's"
    node2 = view(mesh, Proxy("ztunnel", "node2"))
    assert "policy/other/deny-all" in node2
    assert node2["workload/uid-a"] is view(mesh, Proxy("ztunnel", "node3"))["workload/uid-a"], (
        "every view shares one remote form per workload"
    )


def test_waypoint_view_is_everything() -> None:
    mesh = compile_mesh(CLUSTER)
    assert view(mesh, Proxy("waypoint")) == mesh.resources


def test_diff_upserts_changes_and_removes_what_is_gone() -> None:
    old = {"a": {"v": 1}, "b": {"v": 1}, "c": {"v": 1}}
    new = {"a": {"v": 1}, "b": {"v": 2}, "d": {"v": 1}}
    upserts, removes = diff(old, new)
    assert upserts == [{"v": 2}, {"v": 1}]
    assert removes == ["c"]
    assert diff(new, new) == ([], [])


def gateway(name: str, ns_: str, cls: str = "istio-waypoint") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns_},
        "spec": {"gatewayClassName": cls, "listeners": []},
    }


def service(name: str, ns_: str, selector: dict[str, str], **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns_, "labels": labels},
        "spec": {
            "clusterIP": "10.96.0.50",
            "selector": selector,
            "ports": [
                {"port": 80, "name": "http-web"},
                {"port": 90, "appProtocol": "kubernetes.io/h2c"},
                {"port": 91, "name": "grpc"},
                {"port": 92, "name": "tcp-db", "appProtocol": "tcp"},
                {"port": 93, "name": "metrics"},
            ],
        },
    }


WP = "istio.io/use-waypoint"


def test_a_waypoint_is_its_gateway_and_its_ready_pods() -> None:
    mesh = compile_mesh(
        objects(
            ns("demo"),
            gateway("wp", "demo"),
            gateway("ingress", "demo", cls="istio"),  # not a waypoint
            pod("wp", "node1", "10.244.1.50", **{"gateway.networking.k8s.io/gateway-name": "wp"}),
        )
    )
    assert mesh.resources["waypoint/demo/wp"] == {
        "type": "waypoint",
        "key": "demo/wp",
        "name": "wp",
        "namespace": "demo",
        "serviceAccount": "wp",
        "addresses": ["10.244.1.50"],
    }
    assert "waypoint/demo/ingress" not in mesh.resources
    assert "waypoint/demo/wp" in view(mesh, Proxy("ztunnel", "node2")), "every ztunnel needs it"


def test_which_waypoint_fronts_a_workload() -> None:
    """Pod label, else namespace label, else a Service selecting it; waypoint pods never."""
    gw_label = {"gateway.networking.k8s.io/gateway-name": "wp"}
    mesh = compile_mesh(
        objects(
            ns("demo", **{WP: "ns-wp"}),
            ns("plain"),
            pod("own", "node1", "10.244.1.3", **{WP: "pod-wp"}),
            pod("inherits", "node1", "10.244.1.4"),
            pod("wp", "node1", "10.244.1.5", **gw_label),
            pod("svc", "node1", "10.244.1.6", "plain", app="x"),
            pod("none", "node1", "10.244.1.7", "plain"),
            service("x", "plain", {"app": "x"}, **{WP: "svc-wp"}),
        )
    )
    fronted = {r["name"]: r["waypoint"] for r in mesh.resources.values() if r["type"] == "workload"}
    assert fronted == {"own": "pod-wp", "inherits": "ns-wp", "wp": "", "svc": "svc-wp", "none": ""}


def test_service_ports_carry_istios_protocol_selection() -> None:
    mesh = compile_mesh(objects(ns("demo"), service("s", "demo", {"app": "s"})))
    protocols = {p["port"]: p["protocol"] for p in mesh.resources["service/demo/s"]["ports"]}
    assert protocols == {80: "http", 90: "http2", 91: "http2", 92: "tcp", 93: ""}
