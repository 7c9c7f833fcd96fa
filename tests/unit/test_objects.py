"""Object validation: every rejection names the object and the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from api import ObjectError, validate

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "c", "command": ["sleep", "1"], "image": "ignored"}]},
}


def with_(path: str, value: Any, base: dict[str, Any] = POD) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = obj
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return obj


_DELETE = object()


def test_valid_pod_gets_defaults_and_keeps_unknown_fields() -> None:
    pod = validate(POD)
    assert pod["spec"]["serviceAccountName"] == "default"
    assert pod["spec"]["restartPolicy"] == "Always"
    assert pod["spec"]["containers"][0]["image"] == "ignored"
    assert POD["spec"].get("restartPolicy") is None, "input must not be mutated"


def test_namespace_defaults_to_default() -> None:
    assert validate(with_("metadata.namespace", _DELETE))["metadata"]["namespace"] == "default"


@pytest.mark.parametrize(
    ("obj", "field", "reason_part"),
    [
        (with_("kind", "Deployment"), "kind", "unknown kind"),
        (with_("apiVersion", "v2"), "apiVersion", "must be v1"),
        (with_("metadata", "x"), "metadata", "mapping"),
        (with_("metadata.name", "Web"), "metadata.name", "lower case"),
        (with_("metadata.namespace", "a.b"), "metadata.namespace", "lower case"),
        (with_("metadata.labels", {"bad key": "v"}), "metadata.labels", "label key"),
        (with_("metadata.labels", {"app": 5}), "metadata.labels", "must be a string"),
        (with_("spec", _DELETE), "spec", "mapping"),
        (with_("spec.containers", []), "spec.containers", "at least one"),
        (with_("spec.containers.0.command", _DELETE), "spec.containers[0].command", "non-empty"),
        (with_("spec.containers.0.command", ["ok", 3]), "spec.containers[0].command[1]", "string"),
        (with_("spec.containers.0.name", "C_1"), "spec.containers[0].name", "lower case"),
        (
            with_("spec.containers.0.env", [{"name": "X", "value": 1}]),
            "spec.containers[0].env[0].value",
            "quote",
        ),
        (
            with_(
                "spec.containers",
                [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}],
            ),
            "spec.containers[1].name",
            "duplicate",
        ),
        (with_("spec.restartPolicy", "Sometimes"), "spec.restartPolicy", "one of"),
        (with_("spec.hostNetwork", True), "spec.hostNetwork", "not supported"),
        (
            with_("spec.terminationGracePeriodSeconds", -1),
            "spec.terminationGracePeriodSeconds",
            "non-negative",
        ),
    ],
)
def test_invalid_pod(obj: dict[str, Any], field: str, reason_part: str) -> None:
    with pytest.raises(ObjectError) as err:
        validate(obj)
    assert err.value.field == field
    assert reason_part in err.value.reason
    assert "\n" not in str(err.value)


def test_error_names_the_object() -> None:
    with pytest.raises(ObjectError, match=r'^Pod "shop/web": spec.restartPolicy: '):
        validate(with_("spec.restartPolicy", "x"))


def test_namespace_is_cluster_scoped() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "namespace": "b"}}
    with pytest.raises(ObjectError, match="cluster-scoped"):
        validate(ns)


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "s"},
    "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]},
}


def test_service_defaults_target_port_and_protocol() -> None:
    port = validate(SERVICE)["spec"]["ports"][0]
    assert port == {"port": 80, "targetPort": 80, "protocol": "TCP"}


@pytest.mark.parametrize("port", [0, 65536, "80", True])
def test_service_rejects_bad_ports(port: object) -> None:
    with pytest.raises(ObjectError, match=r"spec.ports\[0\].port"):
        validate(with_("spec.ports.0.port", port, SERVICE))


AP = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny", "namespace": "shop"},
    "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]},
}
PA = {
    "apiVersion": "security.istio.io/v1beta1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "strict", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "db"}},
        "mtls": {"mode": "STRICT"},
        "portLevelMtls": {8080: {"mode": "PERMISSIVE"}},
    },
}


def test_istio_policies_are_accepted() -> None:
    assert validate(AP)["spec"]["action"] == "DENY"
    assert validate(PA)["spec"]["mtls"]["mode"] == "STRICT"


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (with_("spec.action", "MAYBE", AP), "spec.action"),
        (with_("spec.rules", ["x"], AP), "spec.rules[0]"),
        (with_("spec.selector", {"matchLabels": {"a b": "c"}}, AP), "spec.selector.matchLabels"),
        (with_("spec.mtls.mode", "LOOSE", PA), "spec.mtls.mode"),
        (with_("spec.portLevelMtls", {"http": {"mode": "STRICT"}}, PA), "spec.portLevelMtls"),
        (with_("spec.portLevelMtls", {80: {"mode": "X"}}, PA), "spec.portLevelMtls[80].mode"),
        (with_("apiVersion", "security.istio.io/v2", PA), "apiVersion"),
    ],
)
def test_invalid_istio_policies(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ObjectError) as err:
        validate(obj)
    assert err.value.field == field
