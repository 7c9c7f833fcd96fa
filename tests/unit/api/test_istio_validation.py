"""Istio's and the Gateway API's validation, case by case: their own invalid cases refused
with their messages, and the valid objects of their tests, datasets and examples accepted (each
testdata file says where its objects come from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from api import schema
from api.errors import ObjectError
from api.objects import validate

TESTDATA = Path(__file__).parent / "testdata"


def _docs(name: str) -> list[dict[str, Any]]:
    text = (TESTDATA / name).read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d]


def _complete(case: dict[str, Any]) -> dict[str, Any]:
    obj = {k: v for k, v in case.items() if not k.startswith("_")}
    obj.setdefault("apiVersion", "security.istio.io/v1")
    meta = obj.setdefault("metadata", {})
    meta.setdefault("name", "case")
    meta.setdefault("namespace", "ns")
    return obj


INVALID = _docs("istio-invalid.yaml")
VALID = _docs("istio-valid.yaml")


def test_the_tables_are_as_large_as_the_issue_asks() -> None:
    assert len(INVALID) >= 60
    assert len(VALID) >= 100


@pytest.mark.parametrize("case", INVALID, ids=[c["_case"] for c in INVALID])
def test_istio_refuses_and_so_do_we(case: dict[str, Any]) -> None:
    with pytest.raises(ObjectError) as err:
        validate(_complete(case))
    assert case["_err"] in str(err.value)


@pytest.mark.parametrize("case", INVALID, ids=[c["_case"] for c in INVALID])
def test_each_invalid_case_is_refused_in_both_api_versions(case: dict[str, Any]) -> None:
    obj = _complete(case)
    obj["apiVersion"] = "security.istio.io/v1beta1"
    with pytest.raises(ObjectError) as err:
        validate(obj)
    assert case["_err"] in str(err.value)


@pytest.mark.parametrize(
    "obj", VALID, ids=[f"{i}-{d['kind']}-{d['metadata']['name']}" for i, d in enumerate(VALID)]
)
def test_istio_accepts_and_so_do_we(obj: dict[str, Any]) -> None:
    validate(obj)


def test_a_message_is_one_line_and_counts_the_rest() -> None:
    obj = _complete({"kind": "AuthorizationPolicy", "spec": {"action": "X", "bogus": 1}})
    with pytest.raises(ObjectError) as err:
        validate(obj)
    assert "\n" not in str(err.value)
    assert str(err.value).endswith("(and 1 more)")


def test_null_fields_are_pruned_as_the_api_server_prunes_them() -> None:
    obj = _complete(
        {"kind": "AuthorizationPolicy", "spec": {"selector": None, "rules": [{"from": None}]}}
    )
    assert validate(obj)["spec"] == {"rules": [{}]}


def test_integer_port_keys_become_strings_as_kubectl_sends_them() -> None:
    obj = _complete(
        {
            "kind": "PeerAuthentication",
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {8080: {}}},
        }
    )
    assert validate(obj)["spec"]["portLevelMtls"] == {"8080": {}}


@pytest.mark.parametrize("value", ["true", "True", "1", "f", "FALSE"])
def test_dry_run_takes_what_go_parsebool_takes(value: str) -> None:
    obj = _complete(
        {"kind": "AuthorizationPolicy", "metadata": {"annotations": {"istio.io/dry-run": value}}}
    )
    validate(obj)


GATEWAY_INVALID = _docs("gateway-invalid.yaml")
GATEWAY_VALID = _docs("gateway-valid.yaml")


@pytest.mark.parametrize("case", GATEWAY_INVALID, ids=[c["_case"] for c in GATEWAY_INVALID])
def test_the_gateway_api_refuses_and_so_do_we(case: dict[str, Any]) -> None:
    with pytest.raises(ObjectError) as err:
        validate({k: v for k, v in case.items() if not k.startswith("_")})
    assert case["_err"] in str(err.value)


@pytest.mark.parametrize(
    "obj", GATEWAY_VALID, ids=[f"{i}-{d['metadata']['name']}" for i, d in enumerate(GATEWAY_VALID)]
)
def test_the_gateway_api_accepts_and_so_do_we(obj: dict[str, Any]) -> None:
    validate(obj)


def test_a_gateway_is_stored_with_its_defaults() -> None:
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "g"},
        "spec": {
            "gatewayClassName": "x",
            "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}],
        },
    }
    listener = validate(gateway)["spec"]["listeners"][0]
    assert listener["allowedRoutes"] == {"namespaces": {"from": "Same"}}


def _rules(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        return found + [r for v in node.values() for r in _rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _rules(v)]
    return []


def test_every_cel_rule_of_our_crds_compiles() -> None:
    rules = {r for s in schema.schemas().values() for r in _rules(s)}
    assert len(rules) > 20
    for rule in rules:
        schema._compiled(rule, "")  # raises on syntax cel-python cannot parse
