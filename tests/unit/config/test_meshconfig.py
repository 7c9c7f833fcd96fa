"""Mesh config validation and update application (RELIABILITY F-12: reject whole, keep the
previous good state)."""

from __future__ import annotations

from typing import Any

import pytest

from api.meshconfig import (
    MAX_RESOURCES,
    ConfigError,
    apply_update,
    key_of,
    policy_namespaces,
    validate,
)


def workload(**overrides: Any) -> dict[str, Any]:
    res = {
        "type": "workload",
        "key": "uid-a",
        "uid": "uid-a",
        "name": "a",
        "namespace": "demo",
        "serviceAccount": "default",
        "node": "node1",
        "ip": "10.244.1.3",
        "labels": {"app": "a"},
        "enrolled": True,
        "waypoint": "",
    }
    return {**res, **overrides}


def service(**overrides: Any) -> dict[str, Any]:
    res = {
        "type": "service",
        "key": "demo/s",
        "name": "s",
        "namespace": "demo",
        "vips": ["10.96.0.10"],
        "ports": [{"port": 80, "targetPort": 8080}],
        "endpoints": ["uid-a"],
        "waypoint": "",
    }
    return {**res, **overrides}


def update(upserts: list[Any], removes: list[Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"version": 1, "upserts": upserts, "removes": removes or [], **kw}


@pytest.mark.parametrize(
    ("resource", "problem"),
    [
        ("not an object", "want an object"),
        ({"type": "cluster", "key": "x"}, "not one of"),
        (workload(ip="10.244.1.300"), "ip: '10.244.1.300' is not an IP"),
        (workload(ip=None), "not an IP"),
        (workload(enrolled="yes"), "enrolled"),
        (workload(name=""), "name: want a string"),
        (workload(name="x" * 300), "name: want a string"),
        (workload(labels={"a": "b" * 100}), "labels"),
        (workload(labels={f"k{i}": "v" for i in range(65)}), "at most 64"),
        (workload(key=7), "key"),
        (service(vips=["a", "b", "c"]), "vips"),
        (service(vips=["bogus"]), "not an IP"),
        (service(ports=[{"port": 0, "targetPort": 80}]), "ports.port"),
        (service(ports=[{"port": 80, "targetPort": True}]), "ports.targetPort"),
        (service(ports=["80"]), "ports"),
        (service(endpoints=[1]), "endpoints"),
        (service(endpoints=["u"] * 10_001), "endpoints"),
        ({"type": "policy", "key": "d/p", "name": "p", "namespace": "d", "spec": []}, "spec"),
        ({"type": "crl", "key": "ca", "pem": "not a CRL"}, "want a PEM CRL"),
        ({"type": "crl", "key": "ca", "pem": "-----BEGIN X509 CRL-----" * 50_000}, "PEM CRL"),
    ],
)
def test_invalid_resources_are_refused_with_a_reason(resource: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        validate(resource)


def test_valid_resources_pass() -> None:
    assert validate(workload()) == workload()
    assert validate(service()) == service()


def test_snapshot_replaces_and_delta_upserts_and_removes() -> None:
    state = apply_update({}, update([workload(), service()], snapshot=True))
    assert sorted(state) == ["service/demo/s", "workload/uid-a"]
    moved = workload(ip="10.244.1.4")
    state = apply_update(state, update([moved], ["service/demo/s"]))
    assert state == {"workload/uid-a": moved}
    state = apply_update(state, update([workload(key="uid-b", uid="uid-b")], snapshot=True))
    assert sorted(state) == ["workload/uid-b"]


def test_one_bad_resource_rejects_the_whole_update_and_keeps_state() -> None:
    good = apply_update({}, update([workload()], snapshot=True))
    before = dict(good)
    with pytest.raises(ConfigError, match="workload uid-x: ip"):
        apply_update(
            good, update([service(), workload(key="uid-x", ip="nope")], ["workload/uid-a"])
        )
    assert good == before


@pytest.mark.parametrize(
    "message",
    [
        {"upserts": [], "removes": []},  # no version
        {"version": "3", "upserts": [], "removes": []},
        {"version": True, "upserts": [], "removes": []},
        {"version": 1, "upserts": {}, "removes": []},
        {"version": 1, "upserts": [], "removes": [7]},
    ],
)
def test_malformed_updates_are_refused(message: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        apply_update({}, message)


def test_resource_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.meshconfig.MAX_RESOURCES", 2)
    many = [workload(key=f"u{i}", uid=f"u{i}") for i in range(3)]
    with pytest.raises(ConfigError, match="exceed the limit of 2"):
        apply_update({}, update(many, snapshot=True))
    assert MAX_RESOURCES >= 100_000


def test_key_of() -> None:
    assert key_of(service()) == "service/demo/s"


@pytest.mark.parametrize(
    ("update", "touched"),
    [
        ({"upserts": [workload()], "removes": ["workload/x"]}, set()),
        (
            {
                "upserts": [{"type": "policy", "namespace": "demo"}, "junk"],
                "removes": ["peerauth/other/strict"],
            },
            {"demo", "other"},
        ),
        ({"upserts": [{"type": "policy", "namespace": "istio-system"}], "removes": []}, {"*"}),
        ({"upserts": [{"type": "policy", "namespace": 7}], "removes": []}, {"*"}),
        ({"upserts": "not a list", "removes": []}, {"*"}),
    ],
)
def test_namespaces_a_rejected_update_would_have_changed(
    update: dict[str, Any], touched: set[str]
) -> None:
    assert policy_namespaces(update, "istio-system") == touched
