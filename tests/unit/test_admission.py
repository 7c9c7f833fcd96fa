"""The API-server rules of the local store, as pure table tests (no kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from api import ObjectError, ObjectRef, validate
from localcluster import admission
from localcluster.store import ObjectSet
from localcluster.topology import plan_nodes

NODES = plan_nodes(3)


def ns(name: str, **labels: str) -> dict[str, Any]:
    return validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def pod(
    name: str, namespace: str = "default", node: str | None = None, command: str = "sleep"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "command": [command]}]}
    if node:
        spec["nodeName"] = node
    return validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


@pytest.fixture
def store() -> ObjectSet:
    objects = ObjectSet({}, 0)
    admission.apply(objects, [ns("default")], NODES)
    return objects


def test_pods_spread_round_robin_and_get_lowest_free_ip(store: ObjectSet) -> None:
    changes = admission.apply(store, [pod(f"p{i}") for i in range(4)], NODES)
    placed = [(c.obj["spec"]["nodeName"], c.obj["status"]["podIP"]) for c in changes]
    assert placed == [
        ("node1", "10.244.1.3"),
        ("node2", "10.244.2.3"),
        ("node3", "10.244.3.3"),
        ("node1", "10.244.1.4"),
    ]
    assert all(c.obj["metadata"]["uid"] for c in changes)


def test_deleted_pod_ip_is_reused(store: ObjectSet) -> None:
    admission.apply(store, [pod("a", node="node1"), pod("b", node="node1")], NODES)
    admission.delete(store, [ObjectRef("Pod", "default", "a")], ignore_missing=False)
    (change,) = admission.apply(store, [pod("c", node="node1")], NODES)
    assert change.obj["status"]["podIP"] == "10.244.1.3"


def test_unknown_node_is_rejected_with_the_known_ones(store: ObjectSet) -> None:
    with pytest.raises(ObjectError, match=r"spec.nodeName: node 'node9' not found \(nodes: node1"):
        admission.apply(store, [pod("a", node="node9")], NODES)


def test_namespace_must_exist_or_come_first_in_the_batch(store: ObjectSet) -> None:
    with pytest.raises(ObjectError, match="namespace 'shop' not found"):
        admission.apply(store, [pod("a", "shop")], NODES)
    actions = [c.action for c in admission.apply(store, [ns("shop"), pod("a", "shop")], NODES)]
    assert actions == ["created", "created"]


def test_reapply_is_unchanged_and_keeps_server_fields(store: ObjectSet) -> None:
    (first,) = admission.apply(store, [pod("a")], NODES)
    revision = store.revision
    (again,) = admission.apply(store, [pod("a")], NODES)
    assert again.action == "unchanged"
    assert store.revision == revision
    assert again.obj["metadata"]["uid"] == first.obj["metadata"]["uid"]


def test_pod_labels_may_change_but_spec_is_immutable(store: ObjectSet) -> None:
    admission.apply(store, [pod("a")], NODES)
    relabeled = pod("a")
    relabeled["metadata"]["labels"] = {"v": "2"}
    (change,) = admission.apply(store, [relabeled], NODES)
    assert change.action == "configured"
    assert change.obj["status"]["podIP"] == "10.244.1.3"
    with pytest.raises(ObjectError, match=r"spec.containers: pod spec is immutable"):
        admission.apply(store, [pod("a", command="other")], NODES)


def test_ip_exhaustion_names_the_node(store: ObjectSet) -> None:
    one = plan_nodes(1)
    admission.apply(store, [pod(f"p{i}") for i in range(252)], one)
    with pytest.raises(ObjectError, match=r"node node1: no free pod address left"):
        admission.apply(store, [pod("straw")], one)


def test_delete_namespace_cascades(store: ObjectSet) -> None:
    admission.apply(store, [ns("shop"), pod("a", "shop"), pod("b", "shop"), pod("c")], NODES)
    changes = admission.delete(store, [ObjectRef("Namespace", "", "shop")], ignore_missing=False)
    assert {str(c.ref) for c in changes} == {'Pod "shop/a"', 'Pod "shop/b"', 'Namespace "shop"'}
    assert [p["metadata"]["name"] for p in store.list("Pod")] == ["c"]


def test_delete_missing_and_default_namespace(store: ObjectSet) -> None:
    with pytest.raises(ObjectError, match=r'Pod "default/x": not found'):
        admission.delete(store, [ObjectRef("Pod", "default", "x")], ignore_missing=False)
    assert admission.delete(store, [ObjectRef("Pod", "default", "x")], ignore_missing=True) == []
    with pytest.raises(ObjectError, match="cannot be deleted"):
        admission.delete(store, [ObjectRef("Namespace", "", "default")], ignore_missing=False)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["a=b"], {"a": "b"}),
        (
            ["istio.io/dataplane-mode=ambient", "x-"],
            {"istio.io/dataplane-mode": "ambient", "x": None},
        ),
        (["a="], {"a": ""}),
    ],
)
def test_parse_label_changes(args: list[str], expected: dict[str, str | None]) -> None:
    assert admission.parse_label_changes(args) == expected


@pytest.mark.parametrize("args", [["novalue"], ["bad key=v"], ["a=b c"], []])
def test_parse_label_changes_rejects(args: list[str]) -> None:
    with pytest.raises(ValueError, match="."):
        admission.parse_label_changes(args)


def test_label_needs_overwrite_to_change_a_value(store: ObjectSet) -> None:
    ref = ObjectRef("Namespace", "", "default")
    assert admission.label(store, ref, {"m": "ambient"}, overwrite=False).action == "labeled"
    assert admission.label(store, ref, {"m": "ambient"}, overwrite=False).action == "unchanged"
    with pytest.raises(ObjectError, match="use --overwrite"):
        admission.label(store, ref, {"m": "none"}, overwrite=False)
    admission.label(store, ref, {"m": "none"}, overwrite=True)
    admission.label(store, ref, {"m": None}, overwrite=False)
    assert "m" not in (store.get(ref) or {})["metadata"]["labels"]


def service(name: str, **spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": name}, "ports": [{"port": 80}], **spec}
    return validate(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}
    )


def test_services_get_a_cluster_ip_kept_for_their_life(store: ObjectSet) -> None:
    changes = admission.apply(store, [service("a"), service("b")], NODES)
    assert [c.obj["spec"]["clusterIP"] for c in changes] == ["10.96.0.11", "10.96.0.12"]
    again = admission.apply(store, [service("a")], NODES)
    assert again[0].action == "unchanged", "re-applying without clusterIP changed the service"
    assert again[0].obj["spec"]["clusterIP"] == "10.96.0.11"
    admission.delete(store, [ObjectRef("Service", "default", "a")], ignore_missing=False)
    reused = admission.apply(store, [service("c")], NODES)
    assert reused[0].obj["spec"]["clusterIP"] == "10.96.0.11"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"clusterIP": "10.97.0.5"}, "not in 10.96.0.0/16"),
        ({"clusterIP": "10.96.0.11"}, "already allocated"),
        ({"clusterIP": "bogus"}, "not an IP"),
    ],
)
def test_cluster_ip_choices_are_checked(
    store: ObjectSet, spec: dict[str, str], problem: str
) -> None:
    admission.apply(store, [service("first")], NODES)
    with pytest.raises(ObjectError, match=problem):
        admission.apply(store, [service("second", **spec)], NODES)


def test_cluster_ip_is_immutable_and_headless_has_none(store: ObjectSet) -> None:
    admission.apply(store, [service("a")], NODES)
    with pytest.raises(ObjectError, match="immutable"):
        admission.apply(store, [service("a", clusterIP="10.96.0.99")], NODES)
    headless = admission.apply(store, [service("h", clusterIP="None")], NODES)
    assert headless[0].obj["spec"]["clusterIP"] == "None"


def _custom(provider: str) -> dict[str, Any]:
    return validate(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"action": "CUSTOM", "provider": {"name": provider}, "rules": [{}]},
        }
    )


def _mesh(*providers: str) -> list[dict[str, Any]]:
    listed = ", ".join(
        f"{{name: {p}, envoyExtAuthzHttp: {{service: x, port: 80}}}}" for p in providers
    )
    return [
        validate(ns("istio-system")),
        validate(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "istio", "namespace": "istio-system"},
                "data": {"mesh": f"extensionProviders: [{listed}]"},
            }
        ),
    ]


def test_a_custom_policy_names_a_provider_of_the_mesh_config(store: ObjectSet) -> None:
    with pytest.raises(ObjectError, match=r'available providers are \[\] but found "authz"'):
        admission.apply(store, [_custom("authz")], NODES)
    admission.apply(store, _mesh("opa", "authz"), NODES)
    with pytest.raises(ObjectError, match=r'available providers are \[opa authz\] but found "x"'):
        admission.apply(store, [_custom("x")], NODES)
    admission.apply(store, [_custom("authz")], NODES)


def test_a_provider_defined_in_the_same_apply_counts(store: ObjectSet) -> None:
    admission.apply(store, [*_mesh("authz"), _custom("authz")], NODES)
