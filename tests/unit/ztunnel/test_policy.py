"""L4 authorization with Istio's semantics, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from ztunnel.state.policy import Connection, compile_policy, evaluate, mtls_mode

CLIENT = "cluster.local/ns/demo/sa/client"
OTHER = "cluster.local/ns/other/sa/x"


def ap(name: str, spec: dict[str, Any], namespace: str = "demo") -> dict[str, Any]:
    return {
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def conn(principal: str | None = CLIENT, src: str = "10.244.1.3", port: int = 8080) -> Connection:
    return Connection(src, principal, "10.244.2.3", port)


def decide(
    policies: list[dict[str, Any]],
    c: Connection,
    labels: dict[str, str] | None = None,
    namespace: str = "demo",
) -> tuple[bool, str]:
    compiled = [p for p in (compile_policy(o) for o in policies) if p]
    d = evaluate(compiled, namespace, labels or {"app": "server"}, c)
    return d.allowed, d.reason


ALLOW_CLIENT = ap(
    "allow", {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [CLIENT]}}]}]}
)
DENY_OTHER_NS = ap(
    "deny", {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["other"]}}]}]}
)


@pytest.mark.parametrize(
    ("policies", "connection", "expected"),
    [
        ([], conn(), (True, "no_policy")),
        ([ALLOW_CLIENT], conn(), (True, "allowed_by_policy")),
        ([ALLOW_CLIENT], conn(OTHER), (False, "no_allow_match")),
        ([ALLOW_CLIENT], conn(None), (False, "no_allow_match")),  # plaintext has no principal
        ([DENY_OTHER_NS], conn(OTHER), (False, "denied_by_policy")),
        ([DENY_OTHER_NS], conn(), (True, "no_policy")),
        ([DENY_OTHER_NS, ALLOW_CLIENT], conn(OTHER), (False, "denied_by_policy")),  # DENY first
        ([ap("nothing", {})], conn(), (False, "no_allow_match")),  # ALLOW, no rules: allow nothing
        ([ap("all", {"rules": [{}]})], conn(None), (True, "allowed_by_policy")),
        ([ap("d", {"action": "DENY"})], conn(), (True, "no_policy")),  # DENY, no rules: no effect
        ([ap("audit", {"action": "AUDIT", "rules": [{}]})], conn(), (True, "no_policy")),
        # CUSTOM is the waypoint's (Istio's ztunnel skips it too).
        ([ap("ext", {"action": "CUSTOM", "rules": [{}]})], conn(), (True, "no_policy")),
    ],
)
def test_action_order(
    policies: list[dict[str, Any]], connection: Connection, expected: tuple[bool, str]
) -> None:
    assert decide(policies, connection) == expected


@pytest.mark.parametrize(
    ("source", "connection", "allowed"),
    [
        ({"principals": ["cluster.local/ns/demo/*"]}, conn(), True),
        ({"principals": ["*/sa/client"]}, conn(), True),
        ({"principals": ["*"]}, conn(), True),
        ({"principals": ["*"]}, conn(None), False),  # "*" means any authenticated peer
        ({"notPrincipals": [CLIENT]}, conn(OTHER), True),
        ({"notPrincipals": [CLIENT]}, conn(), False),
        ({"namespaces": ["demo"]}, conn(), True),
        ({"namespaces": ["demo"]}, conn(None), False),
        ({"notNamespaces": ["demo"]}, conn(OTHER), True),
        ({"ipBlocks": ["10.244.1.0/24"]}, conn(), True),
        ({"ipBlocks": ["10.244.9.0/24", "10.244.1.3"]}, conn(), True),
        ({"notIpBlocks": ["10.244.1.0/24"]}, conn(), False),
        ({"namespaces": ["demo"], "ipBlocks": ["10.9.0.0/16"]}, conn(), False),  # AND across
    ],
)
def test_source_fields(source: dict[str, Any], connection: Connection, allowed: bool) -> None:
    policy = ap("p", {"rules": [{"from": [{"source": source}]}]})
    assert decide([policy], connection)[0] is allowed


@pytest.mark.parametrize(
    ("operation", "port", "allowed"),
    [
        ({"ports": ["8080"]}, 8080, True),
        ({"ports": ["80", "443"]}, 8080, False),
        ({"notPorts": ["8080"]}, 8080, False),
        ({"notPorts": ["22"]}, 8080, True),
    ],
)
def test_ports(operation: dict[str, Any], port: int, allowed: bool) -> None:
    policy = ap("p", {"rules": [{"to": [{"operation": operation}]}]})
    assert decide([policy], conn(port=port))[0] is allowed


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        ([{"key": "source.namespace", "values": ["demo"]}], True),
        ([{"key": "source.ip", "values": ["10.244.1.0/24"]}], True),
        ([{"key": "source.ip", "notValues": ["10.244.1.3"]}], False),
        ([{"key": "destination.port", "values": ["8080"]}], True),
        (
            [
                {"key": "source.principal", "values": [CLIENT]},
                {"key": "destination.port", "values": ["9"]},
            ],
            False,
        ),  # AND
    ],
)
def test_when_conditions(when: list[dict[str, Any]], allowed: bool) -> None:
    assert decide([ap("p", {"rules": [{"when": when}]})], conn())[0] is allowed


def test_l7_allow_rule_is_dropped_more_restrictive() -> None:
    l7 = ap("l7", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
    assert decide([l7], conn()) == (False, "no_allow_match")


def test_l7_deny_rule_loses_l7_and_denies_more() -> None:
    l7 = ap(
        "l7",
        {
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"namespaces": ["demo"]}}],
                    "to": [{"operation": {"paths": ["/admin"]}}],
                }
            ],
        },
    )
    assert decide([l7], conn()) == (False, "denied_by_policy")
    assert decide([l7], conn(OTHER))[0]


def test_request_condition_in_allow_is_dropped() -> None:
    p = ap("p", {"rules": [{"when": [{"key": "request.headers[x]", "values": ["1"]}]}]})
    assert not decide([p], conn())[0]


def test_scope_selector_namespace_and_root() -> None:
    selected = ap(
        "sel",
        {
            "selector": {"matchLabels": {"app": "db"}},
            "rules": [{"from": [{"source": {"namespaces": ["nobody"]}}]}],
        },
    )
    assert decide([selected], conn(), labels={"app": "server"}) == (True, "no_policy")
    assert not decide([selected], conn(), labels={"app": "db"})[0]
    other_ns = ap("x", {}, namespace="elsewhere")
    assert decide([other_ns], conn()) == (True, "no_policy")
    mesh_wide = ap(
        "mesh",
        {"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["demo"]}}]}]},
        namespace="istio-system",
    )
    assert not decide([mesh_wide], conn(OTHER))[0]
    assert decide([mesh_wide], conn())[0]


def test_waypoint_policies_are_not_ztunnels() -> None:
    p = ap("wp", {"targetRefs": [{"kind": "Gateway", "name": "waypoint"}], "rules": []})
    assert compile_policy(p) is None


def test_uncompilable_policy_fails_closed_for_its_workloads() -> None:
    bad = ap(
        "bad",
        {"action": "ALLOW", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300/8"]}}]}]},
    )
    assert decide([bad], conn()) == (False, "policy_invalid")
    bad_port = ap("badport", {"rules": [{"to": [{"operation": {"ports": ["99999"]}}]}]})
    assert decide([bad_port], conn()) == (False, "policy_invalid")


def pa(name: str, spec: dict[str, Any], namespace: str = "demo") -> dict[str, Any]:
    return {
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("pas", "port", "mode"),
    [
        ([], 8080, "PERMISSIVE"),
        ([pa("ns", {"mtls": {"mode": "STRICT"}})], 8080, "STRICT"),
        ([pa("mesh", {"mtls": {"mode": "STRICT"}}, "istio-system")], 8080, "STRICT"),
        (
            [
                pa("mesh", {"mtls": {"mode": "STRICT"}}, "istio-system"),
                pa("ns", {"mtls": {"mode": "PERMISSIVE"}}),
            ],
            8080,
            "PERMISSIVE",
        ),
        (
            [
                pa("ns", {"mtls": {"mode": "STRICT"}}),
                pa(
                    "wl",
                    {
                        "selector": {"matchLabels": {"app": "server"}},
                        "portLevelMtls": {8080: {"mode": "PERMISSIVE"}},
                    },
                ),
            ],
            8080,
            "PERMISSIVE",
        ),
        (
            [
                pa("ns", {"mtls": {"mode": "STRICT"}}),
                pa(
                    "wl",
                    {
                        "selector": {"matchLabels": {"app": "server"}},
                        "portLevelMtls": {8080: {"mode": "PERMISSIVE"}},
                    },
                ),
            ],
            9090,
            "STRICT",
        ),
        (
            [
                pa("ns", {"mtls": {"mode": "UNSET"}}),
                pa("mesh", {"mtls": {"mode": "STRICT"}}, "istio-system"),
            ],
            8080,
            "STRICT",
        ),
        (
            [pa("wl", {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}})],
            8080,
            "PERMISSIVE",
        ),
    ],
)
def test_peer_authentication_mode(pas: list[dict[str, Any]], port: int, mode: str) -> None:
    assert mtls_mode(pas, "demo", {"app": "server"}, port) == mode
