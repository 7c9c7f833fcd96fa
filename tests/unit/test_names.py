"""Kubernetes name and label syntax, table-driven."""

from __future__ import annotations

import pytest

from api import names


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("demo", True),
        ("a", True),
        ("a-1", True),
        ("1a", True),
        ("", False),
        ("-a", False),
        ("a-", False),
        ("A", False),
        ("a.b", False),
        ("a_b", False),
        ("a" * 63, True),
        ("a" * 64, False),
        (None, False),
        (3, False),
    ],
)
def test_dns_label(value: object, ok: bool) -> None:
    assert (names.dns_label(value) is None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("web", True), ("web.v1", True), ("a..b", False), (".a", False), ("a" * 254, False)],
)
def test_dns_subdomain(value: str, ok: bool) -> None:
    assert (names.dns_subdomain(value) is None) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("app", True),
        ("istio.io/dataplane-mode", True),
        ("a_b.c-d", True),
        ("A1", True),
        ("", False),
        ("/app", False),
        ("Istio.io/x", False),
        ("istio.io/", False),
        ("-app", False),
        ("a" * 64, False),
        ("x/y/z", False),
    ],
)
def test_label_key(key: str, ok: bool) -> None:
    assert (names.label_key(key) is None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ambient", True),
        ("", True),
        ("a.b_c-d", True),
        ("-x", False),
        ("a b", False),
        ("a" * 64, False),
        (1, False),
        (True, False),
    ],
)
def test_label_value(value: object, ok: bool) -> None:
    assert (names.label_value(value) is None) is ok


def test_labels_reports_first_bad_entry() -> None:
    assert names.labels({"ok": "yes", "bad key": "v"}) is not None
    assert names.labels(["not", "a", "map"]) == "must be a mapping of label keys to values"
    assert names.labels(None) is None
