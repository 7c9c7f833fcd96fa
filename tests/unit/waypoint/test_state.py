"""What a waypoint fronts, where it sends a request, how it judges TCP, and how it tells
protocols apart (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.config.compile import Proxy, compile_mesh, view
from tests.unit.ztunnel.test_routing import with_waypoint
from ztunnel.state.policy import Connection
from ztunnel.waypoint import state
from ztunnel.waypoint.proxy import sniff


def waypoint_state(*policies: dict[str, Any]) -> state.WaypointState:
    objs = with_waypoint(on="service")
    for p in policies:
        objs.put(p)
    resources = view(compile_mesh(objs), Proxy("waypoint", "mesh/wp"))
    return state.build(resources, "mesh", "wp", "cluster.local", 1)


@pytest.mark.parametrize(
    ("ip", "port", "found"),
    [
        ("10.96.0.20", 80, ("web", None, 8080)),  # the VIP: its target port is the endpoint's
        ("10.96.0.20", 81, "unknown_service_port"),
        ("10.244.2.3", 8080, (None, "b", 8080)),  # an endpoint addressed directly
        ("10.244.1.3", 8080, "not_fronted"),  # a pod without this waypoint: no open relay
        ("127.0.0.1", 15000, "not_fronted"),
    ],
)
def test_only_what_it_fronts(ip: str, port: int, found: object) -> None:
    target = state.resolve(waypoint_state(), ip, port)
    if isinstance(found, str):
        assert target == found
    else:
        assert not isinstance(target, str)
        svc = target.service.name if target.service else None
        pod = target.workload.name if target.workload else None
        assert (svc, pod, target.target_port) == found
        assert target.services == ("web",), "a pod is judged by the Service in front of it"


def test_next_hop_is_a_ready_endpoint_on_the_target_port() -> None:
    st = waypoint_state()
    target = state.resolve(st, "10.96.0.20", 80)
    assert not isinstance(target, str)
    hops = {
        (w.name, port)
        for i in range(4)
        if (hop := state.next_hop(st, target, i))
        for w, port in [hop]
    }
    assert hops == {("b", 8080), ("e", 8080)}


def test_tcp_is_judged_by_the_l4_form_of_bound_policies() -> None:
    http_only: dict[str, Any] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "get-only", "namespace": "mesh"},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
        },
    }
    st = waypoint_state(http_only)
    target = state.resolve(st, "10.96.0.20", 80)
    assert not isinstance(target, str)
    conn = Connection("10.244.1.3", "cluster.local/ns/mesh/sa/a", "10.96.0.20", 8080)
    assert not state.authorize_tcp(st, target, conn).allowed, "an HTTP-only ALLOW matches no TCP"
    assert state.authorize_tcp(waypoint_state(), target, conn).allowed


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (b"GET / HTTP/1.1\r\n", "http1"),
        (b"POST /x", "http1"),
        (b"GE", ""),  # a method still arriving
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"),
        (b"PRI * HTTP", ""),
        (b"\x16\x03\x01\x02\x00", "tcp"),  # a TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.2\r\n", "tcp"),
        (b"", ""),
    ],
)
def test_sniff(first: bytes, kind: str) -> None:
    assert sniff(first) == kind
