"""The kinds `ambientctl` and the controller understand, and their validation.

`validate(obj)` takes one decoded manifest object and returns a normalized deep copy (defaults
filled in as the Kubernetes API server would) or raises ObjectError naming the object and field.
Fields we do not use (a container's `image`, `ports`, `resources` ...) are kept, not rejected, so
manifests written for a real cluster apply unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from api import istio_rules, mesh, names, ports, schema
from api.ambient import WAYPOINT_CLASS
from api.errors import ObjectError

Obj = dict[str, Any]

ISTIO_SECURITY_VERSIONS = frozenset({"security.istio.io/v1", "security.istio.io/v1beta1"})
DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_ACCOUNT = "default"
RESTART_POLICIES = ("Always", "OnFailure", "Never")
MAX_PORT = 65535


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identifies one object: kind, namespace ("" when cluster-scoped) and name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f'{self.kind} "{where}"'


class _Checker:
    """Raises ObjectError for one object, so each validator reads as a list of rules."""

    def __init__(self, ref: ObjectRef) -> None:
        self.ref = str(ref)

    def fail(self, field: str, reason: str) -> None:
        raise ObjectError(self.ref, field, reason)

    def check(self, field: str, reason: str | None) -> None:
        if reason is not None:
            self.fail(field, reason)

    def mapping(self, field: str, value: object, *, required: bool = False) -> Mapping[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            self.fail(field, "must be a mapping")
        assert isinstance(value, Mapping)
        return value

    def seq(self, field: str, value: object) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(field, "must be a list")
        assert isinstance(value, list)
        return value

    def strings(self, field: str, value: object, *, non_empty: bool = False) -> list[str]:
        items = self.seq(field, value)
        if non_empty and not items:
            self.fail(field, "must be a non-empty list of strings")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(f"{field}[{i}]", f"must be a string, got {item!r}")
        return items

    def port(self, field: str, value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PORT:
            self.fail(field, f"must be a port number 1-{MAX_PORT}, got {value!r}")


def _validate_namespace(_obj: Obj, _c: _Checker) -> None:
    """A Namespace has nothing beyond metadata that we use."""


def _validate_configmap(obj: Obj, c: _Checker) -> None:
    """String data, as the API server wants; the mesh's own (MeshConfig) is read as istiod
    reads it, so a bad one is refused here rather than ignored by every proxy."""
    data = c.mapping("data", obj.get("data"))
    for key, value in data.items():
        if not isinstance(value, str):
            c.fail(f"data.{key}", "must be a string")
    meta = obj["metadata"]
    if mesh.is_mesh_configmap(meta["namespace"], meta["name"]):
        try:
            mesh.settings(mesh.load(data.get(mesh.CONFIGMAP_KEY, "")))
        except mesh.MeshConfigError as exc:
            inner = "" if exc.field == mesh.CONFIGMAP_KEY else f".{exc.field}"
            c.fail(f"data.{mesh.CONFIGMAP_KEY}{inner}", exc.reason)


def _validate_pod(obj: Obj, c: _Checker) -> None:
    spec = dict(c.mapping("spec", obj.get("spec"), required=True))
    sa = spec.setdefault("serviceAccountName", DEFAULT_SERVICE_ACCOUNT)
    c.check("spec.serviceAccountName", names.dns_subdomain(sa))
    if "nodeName" in spec and spec["nodeName"] is not None:
        c.check("spec.nodeName", names.dns_subdomain(spec["nodeName"]))
    policy = spec.setdefault("restartPolicy", "Always")
    if policy not in RESTART_POLICIES:
        c.fail("spec.restartPolicy", f"must be one of {', '.join(RESTART_POLICIES)}")
    grace = spec.setdefault("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        c.fail("spec.terminationGracePeriodSeconds", "must be a non-negative integer")
    if spec.get("hostNetwork"):
        c.fail("spec.hostNetwork", "not supported by the local cluster (pods get their own netns)")
    containers = c.seq("spec.containers", spec.get("containers"))
    if not containers:
        c.fail("spec.containers", "must list at least one container")
    seen: set[str] = set()
    for i, container in enumerate(containers):
        _validate_container(c, f"spec.containers[{i}]", container, seen)
    obj["spec"] = spec


def _validate_container(c: _Checker, path: str, value: object, seen: set[str]) -> None:
    container = c.mapping(path, value, required=True)
    name = container.get("name")
    c.check(f"{path}.name", names.dns_label(name))
    if name in seen:
        c.fail(f"{path}.name", f"duplicate container name {name!r}")
    seen.add(str(name))
    # The local cluster runs host programs: there is no image to supply an entrypoint.
    c.strings(f"{path}.command", container.get("command"), non_empty=True)
    c.strings(f"{path}.args", container.get("args"))
    if "workingDir" in container and not isinstance(container["workingDir"], str):
        c.fail(f"{path}.workingDir", "must be a string")
    for j, env in enumerate(c.seq(f"{path}.env", container.get("env"))):
        entry = c.mapping(f"{path}.env[{j}]", env, required=True)
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            c.fail(f"{path}.env[{j}].name", "must be a non-empty string")
        if not isinstance(entry.get("value", ""), str):
            c.fail(f"{path}.env[{j}].value", "must be a string (quote numbers in YAML)")


def _validate_service(obj: Obj, c: _Checker) -> None:
    spec = dict(c.mapping("spec", obj.get("spec"), required=True))
    c.check("spec.selector", names.labels(spec.get("selector")))
    ports = c.seq("spec.ports", spec.get("ports"))
    for i, value in enumerate(ports):
        port = dict(c.mapping(f"spec.ports[{i}]", value, required=True))
        c.port(f"spec.ports[{i}].port", port.get("port"))
        target = port.setdefault("targetPort", port.get("port"))
        if isinstance(target, str):
            c.check(f"spec.ports[{i}].targetPort", names.dns_label(target))
        else:
            c.port(f"spec.ports[{i}].targetPort", target)
        if port.setdefault("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            c.fail(f"spec.ports[{i}].protocol", "must be TCP, UDP or SCTP")
        ports[i] = port
    spec["ports"] = ports
    obj["spec"] = spec


def _refuse(c: _Checker, problems: list[schema.Problem]) -> None:
    if problems:
        line = schema.summary(problems)
        c.fail(line.field, line.reason)


_ISTIO_RULES: dict[str, Callable[[Mapping[str, Any]], list[schema.Problem]]] = {
    "AuthorizationPolicy": istio_rules.authorization_policy,
    "PeerAuthentication": istio_rules.peer_authentication,
}


def istio_problems(obj: Mapping[str, Any]) -> list[schema.Problem]:
    """Everything the API server and Istio's webhook would refuse in one of Istio's objects:
    the CRD's schema first (Istio's rules assume its types), then the webhook's rules."""
    found = schema.problems(obj["apiVersion"], obj["kind"], obj)
    if found:
        return found
    spec = schema.pruned(obj.get("spec") or {})
    meta = obj.get("metadata") or {}
    return [*istio_rules.metadata(obj["kind"], meta, spec), *_ISTIO_RULES[obj["kind"]](spec)]


def _validate_istio(obj: Obj, c: _Checker) -> None:
    _refuse(c, istio_problems(obj))
    # Stored as the API server stores it: nulls pruned, so "from: null" reads as no `from`.
    spec = obj["spec"] = schema.pruned(obj.get("spec") or {})
    if "selector" in spec:
        c.check("spec.selector.matchLabels", names.labels(spec["selector"].get("matchLabels")))


GATEWAY_VERSIONS = frozenset({"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"})


def _validate_gateway(obj: Obj, c: _Checker) -> None:
    """The Gateway API CRD's schema and CEL rules, as the API server checks them (stored with
    its defaults); a waypoint (class `istio-waypoint`) needs its HBONE listener, as Istio's
    `istioctl waypoint generate` writes it."""
    _refuse(c, schema.problems(obj["apiVersion"], obj["kind"], obj))
    obj.update(schema.stored(obj["apiVersion"], obj["kind"], obj))
    spec = obj["spec"]
    listeners = spec["listeners"]
    if spec["gatewayClassName"] == WAYPOINT_CLASS and not any(
        v.get("protocol") == "HBONE" and v.get("port") == ports.HBONE for v in listeners
    ):
        c.fail(
            "spec.listeners", f"a waypoint needs a listener on {ports.HBONE} with protocol HBONE"
        )


@dataclass(frozen=True)
class Kind:
    """What we know of one kind: accepted apiVersions, scope, plural, spec validator."""

    name: str
    api_versions: frozenset[str]
    namespaced: bool
    plural: str
    validate_spec: Callable[[Obj, _Checker], None]


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("Namespace", frozenset({"v1"}), False, "namespaces", _validate_namespace),
        Kind("Pod", frozenset({"v1"}), True, "pods", _validate_pod),
        Kind("Service", frozenset({"v1"}), True, "services", _validate_service),
        Kind("ConfigMap", frozenset({"v1"}), True, "configmaps", _validate_configmap),
        Kind(
            "AuthorizationPolicy",
            ISTIO_SECURITY_VERSIONS,
            True,
            "authorizationpolicies",
            _validate_istio,
        ),
        Kind(
            "PeerAuthentication",
            ISTIO_SECURITY_VERSIONS,
            True,
            "peerauthentications",
            _validate_istio,
        ),
        Kind("Gateway", GATEWAY_VERSIONS, True, "gateways", _validate_gateway),
    )
}


def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    """The reference of an already validated object."""
    meta = obj["metadata"]
    return ObjectRef(obj["kind"], meta.get("namespace", ""), meta["name"])


def _ref_for_errors(obj: Mapping[str, Any]) -> str:
    """The object's name for messages, before we know it is valid."""
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "object"
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str):
        return str(kind)
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return str(ObjectRef(str(kind), namespace if isinstance(namespace, str) else "", name))


def validate(raw: Mapping[str, Any]) -> Obj:
    """Validate one object; return a normalized copy (defaults filled, namespace set)."""
    label = _ref_for_errors(raw)
    raw_kind = raw.get("kind")
    kind = KINDS.get(raw_kind) if isinstance(raw_kind, str) else None
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise ObjectError(label, "kind", f"unknown kind {raw.get('kind')!r} (known: {known})")
    api_version = raw.get("apiVersion")
    if not isinstance(api_version, str) or api_version not in kind.api_versions:
        want = " or ".join(sorted(kind.api_versions))
        raise ObjectError(label, "apiVersion", f"must be {want}, got {raw.get('apiVersion')!r}")
    obj: Obj = copy.deepcopy(dict(raw))
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise ObjectError(label, "metadata", "must be a mapping with a name")
    meta = obj["metadata"] = dict(meta)
    name_reason = (names.dns_label if kind.name == "Namespace" else names.dns_subdomain)(
        meta.get("name")
    )
    if name_reason:
        raise ObjectError(label, "metadata.name", name_reason)
    if kind.namespaced:
        meta.setdefault("namespace", DEFAULT_NAMESPACE)
        if reason := names.dns_label(meta["namespace"]):
            raise ObjectError(label, "metadata.namespace", reason)
    elif "namespace" in meta:
        raise ObjectError(label, "metadata.namespace", f"{kind.name} is cluster-scoped")
    checker = _Checker(ref_of(obj))
    checker.check("metadata.labels", names.labels(meta.get("labels")))
    kind.validate_spec(obj, checker)
    return obj
