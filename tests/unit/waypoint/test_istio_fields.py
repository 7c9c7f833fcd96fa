"""Istio fields that used to make a whole policy deny-all (they did not compile): identity
fields (`serviceAccounts`, `trustDomains`, `source.serviceAccount`, `source.trustDomain`) at
the ztunnel and the waypoint, path templates `{*}`/`{**}` and `connection.sni` at the
waypoint; `remoteIpBlocks` and `remote.ip` with MeshConfig's numTrustedProxies. Each matched
as Istio (and Envoy, where Istio defers to it) matches it."""

from __future__ import annotations

from typing import Any

import pytest

from ztunnel.state.policy import Connection, compile_policy, evaluate
from ztunnel.waypoint.authz import Request, compile_l7, evaluate_l7, path_template
from ztunnel.waypoint.exchange import Flow, policy_request, trusted_client

CLIENT = "cluster.local/ns/demo/sa/client"
OTHER_NS = "cluster.local/ns/other/sa/client"
OTHER_TD = "example.org/ns/demo/sa/client"
TO_SERVICE = [{"kind": "Service", "group": "", "name": "server"}]


def _l4(source_or_when: dict[str, Any], principal: str | None) -> bool:
    spec = {"action": "ALLOW", "rules": [source_or_when]}
    compiled = compile_policy({"metadata": {"name": "p", "namespace": "demo"}, "spec": spec})
    assert compiled is not None and not compiled.error
    conn = Connection("10.244.1.3", principal, "10.244.2.3", 8080)
    return evaluate([compiled], "demo", {}, conn).allowed


def _l7(rule: dict[str, Any], principal: str | None = CLIENT, path: str = "/") -> bool:
    spec = {"targetRefs": TO_SERVICE, "action": "ALLOW", "rules": [rule]}
    compiled = compile_l7({"metadata": {"name": "p", "namespace": "demo"}, "spec": spec})
    assert compiled is not None and not compiled.error
    req = Request("10.244.1.3", principal, "10.96.0.11", 8080, "GET", path, "server", {})
    return evaluate_l7([compiled], "demo", "waypoint", ("server",), req).allowed


IDENTITY_CASES = [
    # A bare service account is of the policy's namespace.
    ({"from": [{"source": {"serviceAccounts": ["client"]}}]}, CLIENT, True),
    ({"from": [{"source": {"serviceAccounts": ["client"]}}]}, OTHER_NS, False),
    ({"from": [{"source": {"serviceAccounts": ["other/client"]}}]}, OTHER_NS, True),
    ({"from": [{"source": {"notServiceAccounts": ["demo/client"]}}]}, CLIENT, False),
    ({"from": [{"source": {"serviceAccounts": ["client"]}}]}, None, False),
    ({"from": [{"source": {"trustDomains": ["cluster.local"]}}]}, CLIENT, True),
    ({"from": [{"source": {"trustDomains": ["cluster.local"]}}]}, OTHER_TD, False),
    ({"from": [{"source": {"trustDomains": ["*.org"]}}]}, OTHER_TD, True),
    ({"from": [{"source": {"notTrustDomains": ["example.*"]}}]}, OTHER_TD, False),
    ({"when": [{"key": "source.serviceAccount", "values": ["client"]}]}, CLIENT, True),
    ({"when": [{"key": "source.serviceAccount", "values": ["client"]}]}, OTHER_NS, False),
    ({"when": [{"key": "source.serviceAccount", "notValues": ["other/client"]}]}, OTHER_NS, False),
    ({"when": [{"key": "source.trustDomain", "values": ["example.org"]}]}, OTHER_TD, True),
    ({"when": [{"key": "source.trustDomain", "values": ["example.org"]}]}, CLIENT, False),
]


@pytest.mark.parametrize(("rule", "principal", "allowed"), IDENTITY_CASES)
def test_identity_fields_at_the_ztunnel(
    rule: dict[str, Any], principal: str, allowed: bool
) -> None:
    assert _l4(rule, principal) is allowed


@pytest.mark.parametrize(("rule", "principal", "allowed"), IDENTITY_CASES)
def test_identity_fields_at_the_waypoint(
    rule: dict[str, Any], principal: str, allowed: bool
) -> None:
    assert _l7(rule, principal) is allowed


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        ("/foo/{*}", "/foo/bar", True),
        ("/foo/{*}", "/foo/bar/baz", False),
        ("/foo/{*}", "/foo/", False),
        ("/foo/{**}", "/foo/", True),
        ("/foo/{**}", "/foo/a/b/c", True),
        ("/foo/{**}", "/foo", False),
        ("/{*}/bar/{**}", "/x/bar/y/z", True),
        ("/{*}/bar/{**}", "/x/y/bar/z", False),
        ("/api/{*}.json", "/api/x.json", False),  # `{*}` is a whole segment, not a glob
        ("/a.b/{*}", "/aXb/c", False),  # literals are literal, not regex
    ],
)
def test_path_templates_match_as_envoys_uri_template(
    template: str, path: str, matches: bool
) -> None:
    assert _l7({"to": [{"operation": {"paths": [template]}}]}, path=path) is matches


def test_a_path_without_a_template_keeps_istios_string_match() -> None:
    assert path_template("/api/*") is None
    assert _l7({"to": [{"operation": {"paths": ["/api/*"]}}]}, path="/api/x/y")


def test_connection_sni_is_absent_on_the_waypoints_plaintext_http() -> None:
    assert not _l7({"when": [{"key": "connection.sni", "values": ["*"]}]})
    assert _l7({"when": [{"key": "connection.sni", "notValues": ["evil.example"]}]})


@pytest.mark.parametrize(
    ("xff", "hops", "client"),
    [
        (None, 1, "10.244.1.3"),  # no header: the peer
        ("203.0.113.9", 0, "10.244.1.3"),  # nothing trusted: the peer, whatever the header says
        ("203.0.113.9", 1, "203.0.113.9"),
        ("1.1.1.1, 203.0.113.9", 1, "203.0.113.9"),  # left of the trusted hop, anyone may write
        ("1.1.1.1, 203.0.113.9", 2, "1.1.1.1"),
        ("203.0.113.9", 2, "10.244.1.3"),  # fewer hops than trusted: the peer
        ("not-an-ip", 1, "10.244.1.3"),
        ("2001:db8::1", 1, "2001:db8::1"),
    ],
)
def test_the_trusted_client_address_is_envoys(xff: str | None, hops: int, client: str) -> None:
    assert trusted_client(xff, "10.244.1.3", hops) == client


def _remote(rule: dict[str, Any], xff: str, hops: int) -> bool:
    spec = {"targetRefs": TO_SERVICE, "action": "ALLOW", "rules": [rule]}
    compiled = compile_l7({"metadata": {"name": "p", "namespace": "demo"}, "spec": spec})
    assert compiled is not None and not compiled.error
    flow = Flow("10.244.1.3", CLIENT, "10.96.0.11", 8080, trusted_proxies=hops)
    req = policy_request(flow, "GET", "/", "server", [("x-forwarded-for", xff)])
    return evaluate_l7([compiled], "demo", "waypoint", ("server",), req).allowed


def test_remote_ip_blocks_use_the_client_the_waypoint_trusts() -> None:
    rule = {"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}
    assert _remote(rule, "203.0.113.9", hops=1)
    assert not _remote(rule, "203.0.113.9", hops=0)  # untrusted header: the peer, 10.244.1.3
    when = {"when": [{"key": "remote.ip", "values": ["203.0.113.0/24"]}]}
    assert _remote(when, "198.51.100.1, 203.0.113.9", hops=1)
    assert not _remote(when, "203.0.113.9, 198.51.100.1", hops=1)


def test_ip_conditions_at_the_waypoint_match_cidrs() -> None:
    # Before: `source.ip` at the waypoint was a string match, so a CIDR never matched.
    assert _l7({"when": [{"key": "source.ip", "values": ["10.244.0.0/16"]}]})
    assert not _l7({"when": [{"key": "source.ip", "notValues": ["10.244.1.3"]}]})
    assert _l7({"when": [{"key": "destination.ip", "values": ["10.96.0.0/12"]}]})
