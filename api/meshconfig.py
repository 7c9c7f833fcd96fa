"""The mesh config the controller streams to proxies: its resources and their validation.

A resource is a JSON object with a `type` and a `key` unique within the type:
  workload      uid, name, namespace, serviceAccount, node, ip, labels, enrolled, waypoint
  service       namespace/name, vips, ports [{port, targetPort, protocol}], endpoints [uid]
  waypoint      namespace/name, serviceAccount, addresses [pod IP] (a Gateway of class
                istio-waypoint and the ready pods that serve it)
  policy        namespace/name, spec (an AuthorizationPolicy spec; the proxy builds matchers)
  peerauth      namespace/name, spec (a PeerAuthentication spec)
  crl           "ca", pem (the CA's CRL, Istio's `ca-crl.pem`; every proxy gets it and checks
                its signature itself)
  meshconfig    "mesh", spec (Istio's MeshConfig from ConfigMap istio/istio-system, `api.mesh`;
                absent: every default)

A proxy validates every resource of an update before applying any (RELIABILITY F-12): one bad
resource NACKs the whole update and the previous good state stays. Limits bound what a hostile
or broken controller can make a proxy hold.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from api import mesh, names

Resource = dict[str, Any]
TYPES = ("workload", "service", "waypoint", "policy", "peerauth", "crl", "meshconfig")
PROTOCOLS = ("", "http", "http2", "tcp")  # a service port's application protocol ("" unknown)
MAX_RESOURCES = 200_000  # 10 000 pods + services + policies, with 10x room
MAX_LABELS = 64
MAX_ENDPOINTS = 10_000
MAX_STRING = 253  # a DNS subdomain, the longest name Kubernetes allows
MAX_REASON = 1024  # why the controller refused an object (controller/config/invalid.py)
MAX_CRL = 1024 * 1024  # ~30 000 revoked serials
CRL_KEY = "crl/ca"
MESH_KEY = "meshconfig/mesh"


class ConfigError(ValueError):
    """A resource the proxy refuses; the message names it and the field."""


def key_of(resource: Mapping[str, Any]) -> str:
    return f"{resource['type']}/{resource['key']}"


def _string(res: Mapping[str, Any], name: str, *, empty: bool = False) -> str:
    value = res.get(name)
    if not isinstance(value, str) or len(value) > MAX_STRING or (not value and not empty):
        raise ConfigError(f"{name}: want a string of 1-{MAX_STRING} characters")
    return value


def _ip(value: object, name: str) -> None:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"{name}: {value!r} is not an IP address") from exc


def _labels(value: object) -> None:
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise ConfigError(f"labels: want a map of at most {MAX_LABELS} entries")
    if problem := names.labels(value):
        raise ConfigError(f"labels: {problem}")


def _port(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ConfigError(f"{name}: {value!r} is not a port")


def _workload(res: Mapping[str, Any]) -> None:
    for name in ("uid", "name", "namespace", "serviceAccount", "node"):
        _string(res, name)
    _string(res, "waypoint", empty=True)
    _ip(res.get("ip"), "ip")
    _labels(res.get("labels"))
    if not isinstance(res.get("enrolled"), bool):
        raise ConfigError("enrolled: want true or false")


def _service(res: Mapping[str, Any]) -> None:
    _string(res, "name")
    _string(res, "namespace")
    _string(res, "waypoint", empty=True)
    vips, svc_ports, endpoints = res.get("vips"), res.get("ports"), res.get("endpoints")
    if not isinstance(vips, list) or len(vips) > 2:
        raise ConfigError("vips: want a list of at most 2 addresses")
    for vip in vips:
        _ip(vip, "vips")
    if not isinstance(svc_ports, list) or len(svc_ports) > 256:
        raise ConfigError("ports: want a list of at most 256")
    for p in svc_ports:
        if not isinstance(p, dict):
            raise ConfigError("ports: want {port, targetPort} objects")
        _port(p.get("port"), "ports.port")
        _port(p.get("targetPort"), "ports.targetPort")
        if p.get("protocol", "") not in PROTOCOLS:
            raise ConfigError(f"ports.protocol: want one of {PROTOCOLS}")
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise ConfigError(f"endpoints: want a list of at most {MAX_ENDPOINTS} workload uids")
    if not all(isinstance(e, str) for e in endpoints):
        raise ConfigError("endpoints: want workload uids")


def _waypoint(res: Mapping[str, Any]) -> None:
    for name in ("name", "namespace", "serviceAccount"):
        _string(res, name)
    addresses = res.get("addresses")
    if not isinstance(addresses, list) or len(addresses) > MAX_LABELS:
        raise ConfigError(f"addresses: want a list of at most {MAX_LABELS} IPs")
    for address in addresses:
        _ip(address, "addresses")


def _spec(res: Mapping[str, Any]) -> dict[str, Any]:
    _string(res, "name")
    _string(res, "namespace")
    spec = res.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError("spec: want an object")
    selector = spec.get("selector")
    if selector is not None:
        _objects([selector], "selector")
        labels = selector.get("matchLabels")
        if labels is not None and not (
            isinstance(labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise ConfigError("selector.matchLabels: want a map of strings")
    return spec


def _objects(value: object, name: str) -> list[dict[str, Any]]:
    """A list of objects (None: empty), or ConfigError: the shapes the compilers walk."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{name}: want a list of objects")
    return value


def _policy(res: Mapping[str, Any]) -> None:
    """An AuthorizationPolicy spec in the shape its compilers read (RELIABILITY F-12: a
    hostile one is NACKed here, never a crash of the proxy that applies it)."""
    spec = _spec(res)
    if not isinstance(res.get("dryRun", False), bool):
        raise ConfigError("dryRun: want a boolean")
    reason = res.get("invalid", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ConfigError(f"invalid: want a reason of at most {MAX_REASON} characters")
    _objects(spec.get("targetRefs"), "targetRefs")
    _objects([spec["targetRef"]] if spec.get("targetRef") is not None else [], "targetRef")
    for i, rule in enumerate(_objects(spec.get("rules"), "rules")):
        for part, inner in (("from", "source"), ("to", "operation")):
            for j, item in enumerate(_objects(rule.get(part), f"rules[{i}].{part}")):
                fields = item.get(inner) or {}
                where = f"rules[{i}].{part}[{j}].{inner}"
                if not isinstance(fields, dict) or not all(
                    isinstance(v, list) for v in fields.values()
                ):
                    raise ConfigError(f"{where}: want an object of lists")
        for j, cond in enumerate(_objects(rule.get("when"), f"rules[{i}].when")):
            if not isinstance(cond.get("key"), str):
                raise ConfigError(f"rules[{i}].when[{j}].key: want a string")


def _peerauth(res: Mapping[str, Any]) -> None:
    spec = _spec(res)
    mtls, ports = spec.get("mtls"), spec.get("portLevelMtls")
    if mtls is not None and not isinstance(mtls, dict):
        raise ConfigError("mtls: want an object")
    if ports is not None and not (
        isinstance(ports, dict) and all(isinstance(v, dict) for v in ports.values())
    ):
        raise ConfigError("portLevelMtls: want a map of port to object")


def _crl(res: Mapping[str, Any]) -> None:
    pem = res.get("pem")
    if not isinstance(pem, str) or len(pem) > MAX_CRL or "-----BEGIN X509 CRL-----" not in pem:
        raise ConfigError(f"pem: want a PEM CRL of at most {MAX_CRL} bytes")


def _meshconfig(res: Mapping[str, Any]) -> None:
    if not isinstance(res.get("spec"), dict):
        raise ConfigError("spec: want an object")
    try:
        mesh.settings(res["spec"])
    except mesh.MeshConfigError as exc:
        raise ConfigError(str(exc)) from None


def settings_of(resources: Mapping[str, Resource]) -> mesh.MeshSettings:
    """The mesh-wide settings a proxy's (validated) resources carry."""
    res = resources.get(MESH_KEY)
    return mesh.settings(res["spec"]) if res else mesh.DEFAULTS


_CHECKS = {
    "workload": _workload,
    "service": _service,
    "waypoint": _waypoint,
    "policy": _policy,
    "peerauth": _peerauth,
    "crl": _crl,
    "meshconfig": _meshconfig,
}


def validate(res: object) -> Resource:
    """The resource, or ConfigError naming what is wrong with it."""
    if not isinstance(res, dict):
        raise ConfigError("resource: want an object")
    kind = res.get("type")
    if not isinstance(kind, str) or kind not in _CHECKS:
        raise ConfigError(f"type: {kind!r} is not one of {', '.join(TYPES)}")
    key = _string(res, "key")
    try:
        _CHECKS[kind](res)
    except ConfigError as exc:
        raise ConfigError(f"{kind} {key}: {exc}") from None
    return res


def apply_update(state: Mapping[str, Resource], update: Mapping[str, Any]) -> dict[str, Resource]:
    """The state after one update (pure). A snapshot replaces everything; a delta upserts and
    removes by key. Raises ConfigError, leaving `state` untouched, if any part is invalid."""
    version = update.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError("update: version must be a non-negative integer")
    upserts, removes = update.get("upserts"), update.get("removes")
    if not isinstance(upserts, list) or not isinstance(removes, list):
        raise ConfigError("update: want upserts and removes lists")
    new = {} if update.get("snapshot") else dict(state)
    for key in removes:
        if not isinstance(key, str):
            raise ConfigError("removes: want resource keys")
        new.pop(key, None)
    for res in upserts:
        new[key_of(validate(res))] = res
    if len(new) > MAX_RESOURCES:
        raise ConfigError(f"update: {len(new)} resources exceed the limit of {MAX_RESOURCES}")
    return new


ALL_NAMESPACES = "*"


def policy_namespaces(update: Mapping[str, Any], root: str) -> frozenset[str]:
    """Namespaces whose policies a (rejected) update would have changed, read defensively: what
    a proxy must fail closed for until a later update converges (RELIABILITY F-11). A change in
    the root namespace, or one that cannot be read, touches every namespace."""
    found: set[str] = set()
    upserts, removes = update.get("upserts"), update.get("removes")
    for res in upserts if isinstance(upserts, list) else []:
        if isinstance(res, dict) and res.get("type") in {"policy", "peerauth"}:
            ns = res.get("namespace")
            found.add(ns if isinstance(ns, str) and ns else ALL_NAMESPACES)
    for key in removes if isinstance(removes, list) else []:
        kind, _, rest = str(key).partition("/")
        if kind in {"policy", "peerauth"}:
            found.add(rest.partition("/")[0] or ALL_NAMESPACES)
    if not isinstance(upserts, list) or not isinstance(removes, list) or root in found:
        return frozenset({ALL_NAMESPACES})
    return frozenset(found)
