"""Routing and inbound admission, as tables over one snapshot."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from api import validate
from api.ambient import GATEWAY_NAME, USE_WAYPOINT
from localcluster.store import ObjectSet
from ztunnel.proxy.routing import Inbound, original_source, plan_inbound, plan_outbound
from ztunnel.state import workloads


def objects(*extra: dict[str, Any]) -> ObjectSet:
    s = ObjectSet({}, 0)
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "mesh", "labels": {"istio.io/dataplane-mode": "ambient"}},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}},
    ]
    pods = [
        ("a", "mesh", "node1", "10.244.1.3"),
        ("b", "mesh", "node2", "10.244.2.3"),
        ("c", "plain", "node2", "10.244.2.4"),
        ("d", "mesh", "node1", "10.244.1.9"),
        ("e", "mesh", "node2", "10.244.2.9"),
    ]
    for name, ns, node, ip in pods:
        pod = validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["x"]}]},
            }
        )
        pod["metadata"]["uid"] = name
        pod["status"] = {"podIP": ip}
        docs.append(pod)
    for doc in [*docs, *extra]:
        s.put(validate(doc) if doc.get("kind") != "Pod" else doc)
    return s


SNAP1 = workloads.from_objects(objects(), "node1", "cluster.local")
SNAP2 = workloads.from_objects(objects(), "node2", "cluster.local")


@pytest.mark.parametrize(
    ("src", "dst", "action", "reason"),
    [
        ("10.244.1.3", "10.244.2.3", "hbone", "mesh"),
        ("10.244.1.3", "10.244.2.4", "passthrough", "destination_not_in_mesh"),
        ("10.244.1.3", "93.184.216.34", "passthrough", "external"),
        ("10.244.1.3", "10.244.7.7", "reject", "unknown_destination"),  # not synced: no plaintext
        ("10.244.2.3", "10.244.1.3", "reject", "unknown_source"),  # not a local pod
        ("10.244.1.200", "10.244.2.3", "reject", "unknown_source"),
    ],
)
def test_outbound(src: str, dst: str, action: str, reason: str) -> None:
    plan = plan_outbound(SNAP1, src, dst, 80)
    assert (plan.action, plan.reason) == (action, reason)


def test_outbound_without_config_fails_closed() -> None:
    assert plan_outbound(None, "10.244.1.3", "10.244.2.3", 80).action == "reject"


def test_ip_claimed_by_two_pods_is_ambiguous() -> None:
    """F-9: IP reuse with config lag: reject rather than guess."""
    clash = objects()
    dup = dict(clash.list("Pod", "mesh")[1])
    dup = {**dup, "metadata": {**dup["metadata"], "name": "b2", "uid": "b2"}}
    clash.put(dup)
    snap = workloads.from_objects(clash, "node2", "cluster.local")
    assert (
        plan_outbound(
            workloads.from_objects(clash, "node1", "cluster.local"),
            "10.244.1.3",
            "10.244.2.3",
            80,
        ).reason
        == "ambiguous_destination"
    )
    got = plan_inbound(
        snap,
        target_ip="10.244.2.3",
        target_port=80,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.3",
        src_principal="cluster.local/ns/mesh/sa/default",
    )
    assert (got.allowed, got.reason) == (False, "ambiguous_destination")


@pytest.mark.parametrize(
    ("listener_uid", "allowed", "reason"),
    [
        (None, True, "allowed"),  # plaintext (15006): no listener, no certificate
        ("UID", True, "allowed"),  # the pod the listener's certificate belongs to
        ("gone", False, "workload_replaced"),  # the IP is another pod's now
    ],
)
def test_delivery_only_to_the_pod_the_listener_was_made_for(
    listener_uid: str | None, allowed: bool, reason: str
) -> None:
    """F-9: a peer accepted with the old pod's certificate reaches nothing of the new one."""
    dst = SNAP2.local("10.244.2.3")
    assert dst is not None
    uid = dst.uid if listener_uid == "UID" else listener_uid
    got = plan_inbound(
        SNAP2,
        target_ip="10.244.2.3",
        target_port=80,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.3",
        src_principal="cluster.local/ns/mesh/sa/default",
        listener_uid=uid,
    )
    assert (got.allowed, got.reason if not got.allowed else "allowed") == (allowed, reason)
    if not allowed:
        assert got.status == 503


PRINCIPAL = "cluster.local/ns/mesh/sa/default"


@pytest.mark.parametrize(
    ("target", "port", "original", "principal", "status", "reason"),
    [
        ("10.244.2.3", 8080, "10.244.2.3", PRINCIPAL, 200, "no_policy"),
        ("10.244.2.3", 15000, "10.244.2.3", PRINCIPAL, 400, "self_call"),  # H-4
        ("10.244.2.3", 15008, "10.244.2.3", PRINCIPAL, 400, "self_call"),
        ("127.0.0.1", 8080, "127.0.0.1", PRINCIPAL, 400, "unknown_destination"),
        ("10.244.2.9", 8080, "10.244.2.3", PRINCIPAL, 400, "target_mismatch"),  # H-3
        ("10.244.2.4", 8080, "10.244.2.4", PRINCIPAL, 400, "unknown_destination"),  # not enrolled
        ("10.244.1.3", 8080, "10.244.1.3", PRINCIPAL, 400, "unknown_destination"),  # not local
        ("10.244.2.3", 8080, "10.244.2.3", None, 200, "no_policy"),  # plaintext, PERMISSIVE
    ],
)
def test_inbound(
    target: str, port: int, original: str, principal: str | None, status: int, reason: str
) -> None:
    got = plan_inbound(
        SNAP2,
        target_ip=target,
        target_port=port,
        original_dst_ip=original,
        src_ip="10.244.1.3",
        src_principal=principal,
    )
    assert (got.status, got.reason) == (status, reason)


def test_strict_peer_authentication_refuses_plaintext_but_not_mtls() -> None:
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": "mesh"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    snap = workloads.from_objects(objects(strict), "node2", "cluster.local")

    def inbound(principal: str | None) -> Inbound:
        return plan_inbound(
            snap,
            target_ip="10.244.2.3",
            target_port=8080,
            original_dst_ip="10.244.2.3",
            src_ip="10.244.2.4",
            src_principal=principal,
        )

    assert inbound(None).reason == "plaintext_refused_strict_mtls"
    assert inbound(PRINCIPAL).allowed


def test_deny_policy_gives_401() -> None:
    deny = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-all", "namespace": "mesh"},
        "spec": {"action": "DENY", "rules": [{}]},
    }
    snap = workloads.from_objects(objects(deny), "node2", "cluster.local")
    got = plan_inbound(
        snap,
        target_ip="10.244.2.3",
        target_port=8080,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.3",
        src_principal=PRINCIPAL,
    )
    assert (got.status, got.reason, got.decision.policy if got.decision else "") == (
        401,
        "denied_by_policy",
        "mesh/deny-all",
    )


def service_objects(*endpoint_labels: str, **labels: str) -> tuple[ObjectSet, dict[str, Any]]:
    """The base objects plus a Service `web` (VIP 10.96.0.20, 80 → 8080, `labels`) selecting
    app=web, and that label on the named pods."""
    objs = objects()
    for pod in objs.list("Pod"):
        if pod["metadata"]["name"] in endpoint_labels:
            pod["metadata"]["labels"] = {"app": "web"}
    svc = validate(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "mesh", "labels": labels},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    svc["spec"]["clusterIP"] = "10.96.0.20"
    objs.put(svc)
    return objs, svc


def with_service(*endpoint_labels: str) -> Any:
    return workloads.from_objects(service_objects(*endpoint_labels)[0], "node1", "cluster.local")


def test_service_vip_is_balanced_across_ready_endpoints_on_the_target_port() -> None:
    snap = with_service("b", "e", "c")
    targets = {
        plan_outbound(snap, "10.244.1.3", "10.96.0.20", 80, choice=i).target for i in range(6)
    }
    assert targets == {("10.244.2.3", 8080), ("10.244.2.9", 8080)}, "c is another namespace"
    plan = plan_outbound(snap, "10.244.1.3", "10.96.0.20", 80)
    assert (plan.action, plan.reason) == ("hbone", "service")
    assert plan.service is not None
    assert plan.service.host == "web.mesh.svc.cluster.local"


@pytest.mark.parametrize(
    ("endpoints", "port", "reason"),
    [(("b",), 81, "unknown_service_port"), ((), 80, "no_healthy_upstream")],
)
def test_service_without_port_or_endpoints_is_refused(
    endpoints: tuple[str, ...], port: int, reason: str
) -> None:
    plan = plan_outbound(with_service(*endpoints), "10.244.1.3", "10.96.0.20", port)
    assert (plan.action, plan.reason) == ("reject", reason)


@pytest.mark.parametrize(
    ("unconverged", "allowed"), [({"mesh"}, False), ({"*"}, False), ({"plain"}, True)]
)
def test_inbound_fails_closed_while_policies_are_unconverged(
    unconverged: set[str], allowed: bool
) -> None:
    """F-11: a rejected update changed policies of these namespaces; until one is accepted,
    their workloads take no inbound (never the old, possibly more permissive, policy)."""
    snap = dataclasses.replace(SNAP2, unconverged=frozenset(unconverged))
    got = plan_inbound(
        snap,
        target_ip="10.244.2.3",
        target_port=80,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.3",
        src_principal="cluster.local/ns/mesh/sa/a",
    )
    assert got.allowed is allowed
    if not allowed:
        assert (got.reason, got.status) == ("policy_not_synced", 503)


def with_waypoint(*, on: str, ready: bool = True) -> Any:
    """`with_service("b", "e")`, a waypoint `wp` of namespace mesh (pod 10.244.1.50 on node1,
    running as ServiceAccount wp, unless not `ready`), named by `on`: "service" or "namespace"."""
    objs, _ = service_objects("b", "e", **({USE_WAYPOINT: "wp"} if on == "service" else {}))
    if on == "namespace":
        mesh = objs.list("Namespace")[0]
        mesh["metadata"]["labels"] = {**mesh["metadata"].get("labels", {}), USE_WAYPOINT: "wp"}
    objs.put(
        validate(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "wp", "namespace": "mesh"},
                "spec": {
                    "gatewayClassName": "istio-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                },
            }
        )
    )
    if ready:
        pod = validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "wp", "namespace": "mesh", "labels": {GATEWAY_NAME: "wp"}},
                "spec": {
                    "nodeName": "node1",
                    "serviceAccountName": "wp",
                    "containers": [{"name": "c", "command": ["x"]}],
                },
            }
        )
        pod["metadata"]["uid"] = "wp"
        pod["status"] = {"podIP": "10.244.1.50"}
        objs.put(pod)
    return objs


@pytest.mark.parametrize(
    ("on", "dst", "port", "authority"),
    [
        ("service", "10.96.0.20", 80, ("10.96.0.20", 80)),  # the VIP, not an endpoint
        ("service", "10.244.2.3", 8080, ("10.244.2.3", 8080)),  # an endpoint: fronted too
        ("namespace", "10.244.2.3", 8080, ("10.244.2.3", 8080)),
        ("namespace", "10.244.2.9", 22, ("10.244.2.9", 22)),  # any pod of the namespace
    ],
)
def test_a_destination_with_a_waypoint_is_reached_through_it(
    on: str, dst: str, port: int, authority: tuple[str, int]
) -> None:
    snap = workloads.from_objects(with_waypoint(on=on), "node1", "cluster.local")
    plan = plan_outbound(snap, "10.244.1.3", dst, port)
    assert (plan.action, plan.reason, plan.hop, plan.target) == (
        "hbone",
        "waypoint",
        "10.244.1.50",
        authority,
    )
    assert plan.waypoint is not None
    assert str(plan.waypoint.identity) == "spiffe://cluster.local/ns/mesh/sa/wp"


def test_a_waypoint_without_ready_pods_refuses_rather_than_bypass() -> None:
    snap = workloads.from_objects(
        with_waypoint(on="service", ready=False), "node1", "cluster.local"
    )
    plan = plan_outbound(snap, "10.244.1.3", "10.96.0.20", 80)
    assert (plan.action, plan.reason) == ("reject", "waypoint_unavailable")


@pytest.mark.parametrize(
    ("principal", "reason"),
    [
        ("cluster.local/ns/mesh/sa/wp", "allowed"),
        ("cluster.local/ns/mesh/sa/a", "bypassed_waypoint"),  # a client straight to the pod
        ("cluster.local/ns/other/sa/wp", "bypassed_waypoint"),
        (None, "bypassed_waypoint"),  # plaintext
    ],
)
def test_a_waypoint_fronted_workload_takes_traffic_only_from_its_waypoint(
    principal: str | None, reason: str
) -> None:
    snap = workloads.from_objects(with_waypoint(on="service"), "node2", "cluster.local")
    got = plan_inbound(
        snap,
        target_ip="10.244.2.3",
        target_port=8080,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.50",
        src_principal=principal,
    )
    assert (got.reason if not got.allowed else "allowed") == reason
    assert got.status == (200 if reason == "allowed" else 401)


@pytest.mark.parametrize(
    ("principal", "forwarded", "source"),
    [
        ("cluster.local/ns/mesh/sa/wp", 'for="10.244.1.3"', "10.244.1.3"),
        ("cluster.local/ns/mesh/sa/wp", "for=10.244.1.3:5000;proto=http", "10.244.1.3"),
        ("cluster.local/ns/mesh/sa/wp", 'for="[2001:db8::1]:80"', "2001:db8::1"),
        ("cluster.local/ns/mesh/sa/wp", "for=unknown", "10.244.1.50"),
        ("cluster.local/ns/mesh/sa/wp", None, "10.244.1.50"),
    ],
)
def test_forwarded_is_trusted_from_the_waypoint(
    principal: str, forwarded: str | None, source: str
) -> None:
    snap = workloads.from_objects(with_waypoint(on="service"), "node2", "cluster.local")
    plan = plan_inbound(
        snap,
        target_ip="10.244.2.3",
        target_port=8080,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.50",
        src_principal=principal,
    )
    assert original_source(plan, "10.244.1.50", principal, forwarded) == source


def test_forwarded_from_anyone_else_is_ignored() -> None:
    """H-5: a client's own `Forwarded` never names the source."""
    plan = plan_inbound(
        SNAP2,
        target_ip="10.244.2.3",
        target_port=80,
        original_dst_ip="10.244.2.3",
        src_ip="10.244.1.3",
        src_principal="cluster.local/ns/mesh/sa/a",
    )
    spoofed = original_source(plan, "10.244.1.3", "cluster.local/ns/mesh/sa/a", 'for="10.9.9.9"')
    assert spoofed == "10.244.1.3"
