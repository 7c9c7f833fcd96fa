"""`ambientctl install` / `uninstall`: the Kubernetes manifests, rendered with checked values,
applied server-side (field manager `ambientctl`), and removed again.

Values live in one documented place, `manifests/kubernetes/values.yaml`; `--set key=value`
overrides them and each is checked for its shape before it is substituted, so no value can
inject YAML. The CA (Istio's plug-in `cacerts` layout) comes from `--ca-dir`: a directory with
`ca-cert.pem` and `ca-key.pem` (a new root is generated there, 0600, when it has none); it
becomes the `cacerts` Secret and the `ambientmesh-ca-root` ConfigMap ztunnels trust.
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from controller.ca import authority

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests" / "kubernetes"
# Vendored from upstream and not templated: their regexes are full of `$`.
VERBATIM = frozenset({"10-crds.yaml"})
FILES = ("00-namespace.yaml", "10-crds.yaml", "20-rbac.yaml", "30-controller.yaml", "40-node.yaml")
FIELD_MANAGER = "ambientctl"
Obj = dict[str, Any]


class InstallError(ValueError):
    """A value or a CA directory that cannot be used; the message says which and why."""


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise InstallError(f"not {what}: {value!r}")
        return value

    return check


def _integer(low: int, high: int) -> Callable[[str], int]:
    def check(value: str) -> int:
        if not re.fullmatch(r"[0-9]+", value) or not low <= int(value) <= high:
            raise InstallError(f"not an integer in {low}..{high}: {value!r}")
        return int(value)

    return check


def _boolean(value: str) -> bool:
    if value.lower() not in {"true", "false"}:
        raise InstallError(f"not true or false: {value!r}")
    return value.lower() == "true"


DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
CHECKS: dict[str, Callable[[str], Any]] = {
    "namespace": _matching(DNS_LABEL, "a DNS label"),
    "image": _matching(r"[a-z0-9][a-z0-9._/:@-]{0,254}", "an image reference"),
    "imagePullPolicy": _matching(r"Always|IfNotPresent|Never", "Always, IfNotPresent or Never"),
    "trustDomain": _matching(rf"{DNS_LABEL}(\.{DNS_LABEL})*", "a trust domain (DNS name)"),
    "workloadCertTTL": _integer(600, 90 * 86400),  # Istio's max_workload_cert_ttl: 90 d
    "controllerReplicas": _integer(1, 10),
    "installIstioCRDs": _boolean,
    "maxUnavailable": _integer(1, 1000),
}


def load_values(overrides: list[str], defaults: Path = MANIFESTS / "values.yaml") -> dict[str, Any]:
    raw = yaml.safe_load(defaults.read_text())
    values = {
        key: CHECKS[key](str(value).lower() if isinstance(value, bool) else str(value))
        for key, value in raw.items()
    }
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise InstallError(f"--set {item!r}: want key=value")
        if key not in CHECKS:
            raise InstallError(f"--set {key}: unknown value (known: {', '.join(sorted(CHECKS))})")
        try:
            values[key] = CHECKS[key](value)
        except InstallError as exc:
            raise InstallError(f"--set {key}: {exc}") from None
    return values


def _render_file(name: str, values: dict[str, Any]) -> list[Obj]:
    text = (MANIFESTS / name).read_text()
    if name not in VERBATIM:
        text = string.Template(text).substitute(
            {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}
        )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(values: dict[str, Any], ca_dir: Path | None = None) -> list[Obj]:
    """Every object of the install, in apply order."""
    objects: list[Obj] = []
    for name in FILES:
        if name == "10-crds.yaml" and not values["installIstioCRDs"]:
            continue
        objects += _render_file(name, values)
    if ca_dir is not None:
        objects[1:1] = ca_objects(values, ca_dir)  # right after the namespace
    return objects


def render_waypoint(
    values: dict[str, Any], namespace: str, name: str, ca_dir: Path | None = None
) -> list[Obj]:
    """A waypoint's Gateway, ServiceAccount and Deployment; with `ca_dir`, the mesh root as a
    ConfigMap of its namespace too (Istio copies its root into every namespace the same way)."""
    CHECKS["namespace"](namespace)
    CHECKS["namespace"](name)
    objects = _render_file(
        "waypoint.yaml", {**values, "waypointNamespace": namespace, "name": name}
    )
    if ca_dir is not None:
        root = ca_objects({**values, "namespace": namespace}, ca_dir)[1]
        objects.insert(1, root)
    return objects


def ca_objects(values: dict[str, Any], ca_dir: Path) -> list[Obj]:
    """The `cacerts` Secret and the `ambientmesh-ca-root` ConfigMap, from an Istio plug-in CA
    directory (a new self-signed root is made there first if it holds none)."""
    if not (ca_dir / authority.CA_CERT).exists():
        ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        authority.load_or_create(ca_dir, values["trustDomain"], datetime.now(UTC))
    try:
        material = authority.load_plugged(ca_dir)
    except authority.CaMaterialError as exc:
        raise InstallError(f"--ca-dir {ca_dir}: {exc}") from None
    files = [authority.CA_CERT, authority.CA_KEY, authority.CERT_CHAIN, authority.ROOT_CERT]
    data = {
        f: base64.b64encode((ca_dir / f).read_bytes()).decode()
        for f in files
        if (ca_dir / f).exists()
    }
    meta = {
        "namespace": values["namespace"],
        "labels": {"app.kubernetes.io/part-of": "ambientmesh"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": "cacerts", **meta},
        "data": data,
    }
    root = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ambientmesh-ca-root", **meta},
        "data": {authority.ROOT_CERT: "".join(material.bundle_pem())},
    }
    return [secret, root]


def to_yaml(objects: list[Obj]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
