"""The waypoint's L7 AuthorizationPolicy (pure, table-tested): binding by targetRefs, Istio's
matching and order, and what fails closed (path normalization: test_paths)."""

from __future__ import annotations

from typing import Any

import pytest

from ztunnel.waypoint.authz import Request, compile_l7, evaluate_l7

CLIENT = "cluster.local/ns/demo/sa/client"
OTHER = "cluster.local/ns/other/sa/x"


def request(
    method: str = "GET",
    path: str = "/api/users",
    principal: str | None = CLIENT,
    host: str = "server.demo.svc.cluster.local",
    headers: dict[str, str] | None = None,
    port: int = 8080,
) -> Request:
    return Request("10.244.1.3", principal, "10.96.0.11", port, method, path, host, headers or {})


def policy(name: str, spec: dict[str, Any], ns: str = "demo") -> Any:
    return compile_l7({"metadata": {"name": name, "namespace": ns}, "spec": spec})


TO_SERVICE = [{"kind": "Service", "group": "", "name": "server"}]
TO_GATEWAY = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
ONLY_GET_API = policy(
    "get-api",
    {
        "targetRefs": TO_SERVICE,
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": [CLIENT]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}],
            }
        ],
    },
)


@pytest.mark.parametrize(
    ("req", "allowed", "reason"),
    [
        (request(), True, "allowed_by_policy"),
        (request(method="POST"), False, "no_allow_match"),
        (request(path="/admin"), False, "no_allow_match"),
        (request(principal=OTHER), False, "no_allow_match"),
        (request(principal=None), False, "no_allow_match"),
    ],
)
def test_allow_get_api_from_the_client_only(req: Request, allowed: bool, reason: str) -> None:
    decision = evaluate_l7([ONLY_GET_API], "demo", "waypoint", ("server",), req)
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_binding_by_target_and_namespace() -> None:
    for_gateway = policy("deny-all", {"targetRefs": TO_GATEWAY, "action": "DENY", "rules": [{}]})
    other_ns = policy("deny-all", {"targetRefs": TO_GATEWAY, "action": "DENY", "rules": [{}]}, "x")
    selector = policy("l4", {"selector": {"matchLabels": {"app": "server"}}, "rules": [{}]})
    assert selector is None, "selector policies are ztunnel's"
    assert not evaluate_l7([for_gateway], "demo", "waypoint", (), request()).allowed
    assert evaluate_l7([for_gateway], "demo", "other-gw", (), request()).allowed
    assert evaluate_l7([other_ns], "demo", "waypoint", (), request()).allowed
    assert evaluate_l7(
        [ONLY_GET_API], "demo", "waypoint", ("another",), request(method="PUT")
    ).allowed


def test_deny_beats_allow_and_negations() -> None:
    deny_delete = policy(
        "no-delete",
        {
            "targetRefs": TO_SERVICE,
            "action": "DENY",
            "rules": [{"to": [{"operation": {"methods": ["DELETE"], "notPaths": ["/api/own/*"]}}]}],
        },
    )
    allow_all = policy("all", {"targetRefs": TO_SERVICE, "rules": [{}]})
    policies = [allow_all, deny_delete]
    assert not evaluate_l7(
        policies, "demo", "waypoint", ("server",), request("DELETE", "/x")
    ).allowed
    assert evaluate_l7(
        policies, "demo", "waypoint", ("server",), request("DELETE", "/api/own/1")
    ).allowed
    assert evaluate_l7(policies, "demo", "waypoint", ("server",), request("GET", "/x")).allowed


@pytest.mark.parametrize(
    ("operation", "req", "matches"),
    [
        (
            {"hosts": ["server.demo.svc.cluster.local"]},
            request(host="SERVER.demo.svc.cluster.local:8080"),
            True,
        ),
        ({"hosts": ["*.example.com"]}, request(host="api.example.com"), True),
        ({"notHosts": ["*.example.com"]}, request(host="api.example.com"), False),
        ({"ports": ["8080"]}, request(), True),
        ({"notPorts": ["8080"]}, request(), False),
        ({"paths": ["*.png"]}, request(path="/img/a.png"), True),
        ({"methods": ["get"]}, request(), False),  # methods are case-sensitive, as Istio's
    ],
)
def test_operation_fields(operation: dict[str, Any], req: Request, matches: bool) -> None:
    p = policy("p", {"targetRefs": TO_SERVICE, "rules": [{"to": [{"operation": operation}]}]})
    assert evaluate_l7([p], "demo", "waypoint", ("server",), req).allowed is matches


def test_when_on_request_headers() -> None:
    p = policy(
        "h",
        {
            "targetRefs": TO_SERVICE,
            "rules": [
                {
                    "when": [
                        {"key": "request.headers[X-Version]", "values": ["v2*"]},
                        {"key": "source.namespace", "notValues": ["other"]},
                    ]
                }
            ],
        },
    )
    ok = request(headers={"x-version": "v2.1"})
    assert evaluate_l7([p], "demo", "waypoint", ("server",), ok).allowed
    assert not evaluate_l7([p], "demo", "waypoint", ("server",), request()).allowed
    wrong_ns = request(principal=OTHER, headers={"x-version": "v2"})
    assert not evaluate_l7([p], "demo", "waypoint", ("server",), wrong_ns).allowed


def test_what_cannot_be_judged_is_more_restrictive() -> None:
    jwt_allow = policy(
        "jwt",
        {"targetRefs": TO_SERVICE, "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
    )
    assert not evaluate_l7([jwt_allow], "demo", "waypoint", ("server",), request()).allowed
    jwt_deny = policy(
        "jwt-deny",
        {
            "targetRefs": TO_SERVICE,
            "action": "DENY",
            "rules": [
                {"from": [{"source": {"requestPrincipals": ["evil"], "namespaces": ["demo"]}}]}
            ],
        },
    )
    assert not evaluate_l7([jwt_deny], "demo", "waypoint", ("server",), request()).allowed


def test_a_policy_that_does_not_compile_denies() -> None:
    broken = policy(
        "bad", {"targetRefs": TO_SERVICE, "rules": [{"to": [{"operation": {"ports": ["0"]}}]}]}
    )
    decision = evaluate_l7([broken], "demo", "waypoint", ("server",), request())
    assert (decision.allowed, decision.reason) == (False, "policy_invalid")
    unknown = policy(
        "u", {"targetRefs": TO_SERVICE, "rules": [{"when": [{"key": "x.y", "values": ["1"]}]}]}
    )
    assert not evaluate_l7([unknown], "demo", "waypoint", ("server",), request()).allowed


def test_rules_absent_match_nothing_and_custom_fails_closed() -> None:
    no_rules = policy("none", {"targetRefs": TO_SERVICE})
    assert not evaluate_l7([no_rules], "demo", "waypoint", ("server",), request()).allowed
    custom = policy("ext", {"targetRefs": TO_SERVICE, "action": "CUSTOM", "rules": [{}]})
    assert not evaluate_l7([custom], "demo", "waypoint", ("server",), request()).allowed
