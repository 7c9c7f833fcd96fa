"""Objects the Kubernetes API let in that Istio's validation refuses: each is enforced as a
stand-in that fails closed, scoped as narrowly as its valid parts allow, and named with its
reason in the resource, the proxies' decisions, the controller's status and its metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from api.objects import istio_problems
from controller.config import invalid
from controller.config.compile import compile_mesh
from controller.config.server import ConfigMetrics, ConfigServer
from sources.base import Cache
from tests.unit.config.test_compile import ns, objects, pod, policy
from ztunnel.state import policy as l4
from ztunnel.state import workloads

SEL = {"matchLabels": {"app": "web"}}


def _stand_in(spec: Any) -> dict[str, Any]:
    obj = policy("p", "demo")
    obj["spec"] = spec
    problems = istio_problems(obj)
    assert problems, "the case must be invalid"
    return invalid.policy_stand_in(spec, problems)


@pytest.mark.parametrize(
    ("spec", "enforced"),
    [
        # ALLOW: allows nothing, for the workloads it selects.
        (
            {"selector": SEL, "rules": [{"to": [{"operation": {"ports": ["http"]}}]}]},
            {"selector": SEL, "action": "ALLOW"},
        ),
        # DENY: denies everything it selects.
        (
            {
                "selector": SEL,
                "action": "DENY",
                "rules": [{"from": [{"source": {"ipBlocks": ["x"]}}]}],
            },
            {"selector": SEL, "action": "DENY", "rules": [{}]},
        ),
        # CUSTOM without a provider, and an unknown action: deny.
        ({"action": "CUSTOM", "rules": [{}]}, {"action": "DENY", "rules": [{}]}),
        ({"selector": SEL, "action": "REJECT"}, {"selector": SEL, "action": "DENY", "rules": [{}]}),
        # AUDIT never changes a verdict.
        (
            {"action": "AUDIT", "rules": [{"when": [{"key": "bogus", "values": ["x"]}]}]},
            {"action": "AUDIT"},
        ),
        # A selection that is itself invalid cannot be trusted: the whole namespace.
        (
            {"selector": {"matchLabels": {"app": "web-*"}}, "action": "DENY", "rules": [{}]},
            {"action": "DENY", "rules": [{}]},
        ),
        (
            {
                "selector": SEL,
                "targetRefs": [{"kind": "Service", "name": "web"}],
                "action": "DENY",
                "rules": [{}],
            },
            {"action": "DENY", "rules": [{}]},
        ),
        # A waypoint policy stays at its waypoint.
        (
            {"targetRefs": [{"kind": "Service", "name": "web"}], "rules": [{"from": []}]},
            {"targetRefs": [{"kind": "Service", "name": "web"}], "action": "ALLOW"},
        ),
        # Not even a mapping.
        (["x"], {"action": "DENY", "rules": [{}]}),
    ],
)
def test_policy_stand_ins_fail_closed(spec: Any, enforced: dict[str, Any]) -> None:
    assert _stand_in(spec) == enforced


def test_an_invalid_peer_authentication_is_strict_where_it_selects() -> None:
    obj = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "pa", "namespace": "demo"},
        "spec": {"selector": SEL, "mtls": {"mode": "LOOSE"}},
    }
    stand_in = invalid.peer_authentication_stand_in(obj["spec"], istio_problems(obj))
    assert stand_in == {"selector": SEL, "mtls": {"mode": "STRICT"}}


BAD_ALLOW = policy(
    "bad-allow", "demo", selector=SEL, rules=[{"to": [{"operation": {"ports": ["http"]}}]}]
)
GOOD_ALLOW = policy(
    "good-allow", "demo", selector=SEL, rules=[{"from": [{"source": {"namespaces": ["demo"]}}]}]
)
BAD_DENY = policy("bad-deny", "demo", action="DENY", rules=[{"from": [{"source": {}}]}])
CLUSTER = [
    ns("demo", **{"istio.io/dataplane-mode": "ambient"}),
    pod("a", "node1", "10.244.1.3", app="web"),
]


def _decide(*policies: dict[str, Any], client_ns: str = "demo") -> l4.Decision:
    mesh = compile_mesh(objects(*CLUSTER, *policies))
    snap = workloads.build(mesh.resources, "node1", "cluster.local", 1)
    conn = l4.Connection("10.244.2.9", f"cluster.local/ns/{client_ns}/sa/c", "10.244.1.3", 80)
    return l4.evaluate(snap.policies, "demo", {"app": "web"}, conn)


def test_an_invalid_allow_policy_no_longer_denies_what_other_policies_allow() -> None:
    # Before: any invalid policy compiled to deny-all at the ztunnel, silently.
    assert _decide(BAD_ALLOW, GOOD_ALLOW) == l4.Decision(
        True, "demo/good-allow", "allowed_by_policy"
    )


def test_an_invalid_allow_policy_allows_nothing_and_says_so() -> None:
    assert _decide(BAD_ALLOW) == l4.Decision(False, "demo/bad-allow", "policy_invalid")


def test_an_invalid_deny_policy_denies_all_and_says_so() -> None:
    assert _decide(BAD_DENY, GOOD_ALLOW) == l4.Decision(False, "demo/bad-deny", "policy_invalid")


def test_the_resource_carries_the_reason() -> None:
    res = compile_mesh(objects(*CLUSTER, BAD_ALLOW)).resources["policy/demo/bad-allow"]
    assert res["invalid"].startswith(
        "spec.rules[0].to[0].operation.ports: bad port (http): strconv.ParseUint"
    )
    assert res["spec"] == {"selector": SEL, "action": "ALLOW"}
    valid = compile_mesh(objects(*CLUSTER, GOOD_ALLOW)).resources["policy/demo/good-allow"]
    assert "invalid" not in valid


def test_the_controller_reports_invalid_objects_in_status_and_metrics() -> None:
    registry = CollectorRegistry()

    async def nobody(_headers: dict[str, str]) -> None:
        return None

    server = ConfigServer(Cache(()), nobody, ConfigMetrics(registry))
    server._report_invalid(compile_mesh(objects(*CLUSTER, BAD_ALLOW, BAD_DENY, GOOD_ALLOW)))
    listed = server.status()["invalid"]
    assert [(i["kind"], i["object"]) for i in listed] == [
        ("AuthorizationPolicy", "demo/bad-allow"),
        ("AuthorizationPolicy", "demo/bad-deny"),
    ]
    assert "`from.source` must not be empty" in listed[1]["reason"]
    value = registry.get_sample_value(
        "ambientmesh_controller_invalid_objects", {"kind": "AuthorizationPolicy"}
    )
    assert value == 2
    server._report_invalid(compile_mesh(objects(*CLUSTER, GOOD_ALLOW)))
    assert server.status()["invalid"] == []
