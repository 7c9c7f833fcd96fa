"""Istio ambient's semantics where ours used to differ (issue 26): dry-run policies are
evaluated and reported, never enforced; CUSTOM is skipped at the ztunnel and enforced (fail
closed, until an external authorizer exists) at the waypoint."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from controller.config.compile import compile_mesh
from tests.unit.config.test_compile import ns, objects, pod, policy
from ztunnel.metrics import ProxyMetrics
from ztunnel.state import policy as l4
from ztunnel.state import workloads
from ztunnel.waypoint import authz

DRY_RUN = {"istio.io/dry-run": "true"}
CLUSTER = [ns("demo", **{"istio.io/dataplane-mode": "ambient"}), pod("a", "node1", "10.244.1.3")]
CLIENT = "cluster.local/ns/demo/sa/c"


def _dry(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["annotations"] = dict(DRY_RUN)
    return obj


def _decide(*policies: dict[str, Any]) -> l4.Decision:
    mesh = compile_mesh(objects(*CLUSTER, *policies))
    snap = workloads.build(mesh.resources, "node1", "cluster.local", 1)
    conn = l4.Connection("10.244.2.9", CLIENT, "10.244.1.3", 80)
    return l4.evaluate(snap.policies, "demo", {}, conn)


def test_a_dry_run_deny_all_is_reported_and_not_enforced() -> None:
    # Before: the annotation was ignored, and this policy reset every connection to the pod.
    decision = _decide(_dry(policy("deny-all", "demo", action="DENY", rules=[{}])))
    assert (decision.allowed, decision.reason) == (True, "no_policy")
    assert decision.shadow == (l4.Shadow("deny", False, "demo/deny-all"),)


def test_a_dry_run_allow_beside_an_enforced_one() -> None:
    enforced = policy("allow-all", "demo", rules=[{}])
    dry = _dry(policy("only-other", "demo", rules=[{"from": [{"source": {"namespaces": ["x"]}}]}]))
    decision = _decide(enforced, dry)
    assert (decision.allowed, decision.policy) == (True, "demo/allow-all")
    assert decision.shadow == (l4.Shadow("allow", False, ""),)


def test_dry_run_false_is_enforced() -> None:
    obj = policy("deny-all", "demo", action="DENY", rules=[{}])
    obj["metadata"]["annotations"] = {"istio.io/dry-run": "false"}
    assert _decide(obj) == l4.Decision(False, "demo/deny-all", "denied_by_policy")


def test_dry_run_verdicts_are_counted_under_istios_names() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    metrics.shadowed((l4.Shadow("deny", False, "demo/deny-all"),), "inbound test")
    assert registry.get_sample_value("istio_dry_run_deny_shadow_denied_total") == 1
    assert registry.get_sample_value("istio_dry_run_allow_shadow_allowed_total") == 0


def test_dry_run_at_the_waypoint() -> None:
    spec = {"targetRefs": [{"kind": "Service", "name": "s"}], "action": "DENY", "rules": [{}]}
    obj = {"metadata": {"name": "d", "namespace": "demo"}, "spec": spec, "dryRun": True}
    compiled = authz.compile_l7(obj)
    assert compiled is not None
    req = authz.Request("10.244.2.9", CLIENT, "10.96.0.1", 80, "GET", "/", "s", {})
    decision = authz.evaluate_l7([compiled], "demo", "waypoint", ("s",), req)
    assert decision.allowed
    assert decision.shadow == (l4.Shadow("deny", False, "demo/d"),)


def test_custom_is_skipped_at_the_ztunnel() -> None:
    # Before: CUSTOM compiled to a DENY at the ztunnel and reset every connection it matched.
    custom = policy("ext", "demo", action="CUSTOM", provider={"name": "authz"}, rules=[{}])
    assert _decide(custom) == l4.Decision(True, "", "no_policy")


def test_custom_at_the_waypoint_fails_closed_until_an_authorizer_exists() -> None:
    spec = {"targetRefs": [{"kind": "Service", "name": "s"}], "action": "CUSTOM", "rules": [{}]}
    compiled = authz.compile_l7({"metadata": {"name": "ext", "namespace": "demo"}, "spec": spec})
    assert compiled is not None
    req = authz.Request("10.244.2.9", CLIENT, "10.96.0.1", 80, "GET", "/", "s", {})
    assert not authz.evaluate_l7([compiled], "demo", "waypoint", ("s",), req).allowed
