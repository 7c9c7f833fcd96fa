"""Kubernetes name and label syntax (k8s.io/apimachinery/pkg/util/validation), as pure checks.

Each check returns None when valid, else a short reason; callers add the object and field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63


def dns_label(value: object) -> str | None:
    """RFC 1123 label: namespaces, container names, ports' names."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _DNS1123_LABEL.match(value):
        return "must consist of lower case alphanumerics or '-', start and end with an alphanumeric"
    return None


def dns_subdomain(value: object) -> str | None:
    """RFC 1123 subdomain: most object names (pods, services, policies)."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return (
            "must consist of lower case alphanumerics, '-' or '.', "
            "start and end with an alphanumeric"
        )
    return None


def label_key(key: object) -> str | None:
    """A qualified name with an optional DNS-subdomain prefix: `[prefix/]name`."""
    if not isinstance(key, str) or not key:
        return "label key must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or (reason := dns_subdomain(prefix)) is not None):
        return f"label key {key!r}: prefix {reason if prefix else 'must be non-empty'}"
    if len(name) > DNS1123_LABEL_MAX or not _QUALIFIED_NAME.match(name):
        return (
            f"label key {key!r}: name must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def label_value(value: object) -> str | None:
    if not isinstance(value, str):
        return f"label value {value!r} must be a string (quote it in YAML)"
    if len(value) > LABEL_VALUE_MAX or not _LABEL_VALUE.match(value):
        return (
            f"label value {value!r} must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def labels(value: object) -> str | None:
    """A label map (also used for selectors): every key and value valid."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return "must be a mapping of label keys to values"
    items: Mapping[Any, Any] = value
    for key, val in items.items():
        reason = label_key(key) or label_value(val)
        if reason:
            return reason
    return None
