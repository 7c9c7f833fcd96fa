"""Cluster objects → mesh config resources, and each proxy's share of them (pure, table-tested).

What a proxy gets (DESIGN "Config distribution"; the issue asks to document the cost):
- a ztunnel: every workload's address record (any pod may be a destination; remote ones
  without labels, which only local policy selection needs), every service, and the policies and
  PeerAuthentications of the root namespace and of the namespaces that have a pod on its node
  (not the MeshConfig: its settings are the waypoint's);
- a waypoint: everything.
Every proxy gets the waypoints (a Gateway of class istio-waypoint, its ready pods' addresses and
their ServiceAccount). A workload is fronted by the waypoint its pod, else its namespace, else a
Service selecting it names with `istio.io/use-waypoint` (in its own namespace); waypoint pods
never are.
At 10 000 pods that is ~10 000 x ~230 B ≈ 2.3 MiB per ztunnel snapshot, sent once per
(re)connect; afterwards a pod change costs one ~230 B upsert to every ztunnel. Istio's ztunnel
makes the same trade (full WDS; on-demand lookups are optional).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from api import istio_rules, mesh
from api.ambient import ROOT_NAMESPACE, WAYPOINT_CLASS, enrolled, use_waypoint, waypoint_of
from api.meshconfig import Resource, key_of
from api.objects import Obj, istio_problems
from api.schema import Problem, pruned
from controller.config import invalid
from localcluster.store import ObjectSet


@dataclass(frozen=True)
class Proxy:
    kind: str  # "ztunnel" | "waypoint"
    node: str = ""  # a ztunnel's node; a waypoint's Gateway ("namespace/name")


def _labels(obj: Obj | None) -> dict[str, str]:
    return dict((obj or {}).get("metadata", {}).get("labels") or {})


def _ready(pod: Obj) -> bool:
    """Kubernetes' Ready condition when the source reports one (local pods have none)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return all(c.get("status") == "True" for c in conditions if c.get("type") == "Ready")


def _selects(svc: Obj, pod: Obj) -> bool:
    selector = (svc.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(_labels(pod).get(k) == v for k, v in selector.items())


def _workload(pod: Obj, namespace: Obj | None, services: Iterable[Obj]) -> Resource | None:
    """`services`: those of the pod's namespace."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    if not status.get("podIP") or spec.get("hostNetwork"):
        return None  # host-network pods share the node's address: never mesh workloads
    waypoint = ""
    if not waypoint_of(pod):  # a waypoint pod is never behind a waypoint
        fronting = [w for svc in services if _selects(svc, pod) and (w := use_waypoint(svc))]
        waypoint = use_waypoint(pod, namespace) or min(fronting, default="")
    return {
        "type": "workload",
        "key": meta["uid"],
        "uid": meta["uid"],
        "name": meta["name"],
        "namespace": meta["namespace"],
        "serviceAccount": spec.get("serviceAccountName") or "default",
        "node": spec.get("nodeName") or "",
        "ip": status["podIP"],
        "labels": _labels(pod),
        "enrolled": enrolled(pod, namespace),
        "waypoint": waypoint,
    }


def _service(svc: Obj, pods: Iterable[Obj], namespace: Obj | None) -> Resource:
    """`pods`: those of the service's namespace."""
    meta, spec = svc["metadata"], svc.get("spec") or {}
    selector = spec.get("selector") or {}
    endpoints = sorted(
        p["metadata"]["uid"]
        for p in pods
        if selector and (p.get("status") or {}).get("podIP") and _ready(p) and _selects(svc, p)
    )
    vip = spec.get("clusterIP")
    return {
        "type": "service",
        "key": f"{meta['namespace']}/{meta['name']}",
        "name": meta["name"],
        "namespace": meta["namespace"],
        "vips": [vip] if vip and vip != "None" else [],
        "ports": [
            {
                "port": p["port"],
                "targetPort": p.get("targetPort", p["port"]),
                "protocol": _app_protocol(p),
            }
            for p in spec.get("ports") or []
            if isinstance(p.get("targetPort", p["port"]), int)  # named ports: not yet resolved
        ],
        "endpoints": endpoints,
        "waypoint": use_waypoint(svc, namespace),
    }


def _app_protocol(port: Obj) -> str:
    """Istio's protocol selection: `appProtocol`, else the port name's prefix (`http-web`)."""
    declared = str(port.get("appProtocol") or port.get("name") or "").lower()
    family = declared.split("-", 1)[0].rsplit("/", 1)[-1]  # kubernetes.io/h2c → h2c
    return {"http": "http", "http2": "http2", "grpc": "http2", "h2c": "http2", "tcp": "tcp"}.get(
        family, ""
    )


def _waypoint(gateway: Obj, pods: Iterable[Obj]) -> Resource | None:
    """`pods`: those of the Gateway's namespace."""
    meta, spec = gateway["metadata"], gateway.get("spec") or {}
    if spec.get("gatewayClassName") != WAYPOINT_CLASS:
        return None
    serving = [
        p
        for p in pods
        if waypoint_of(p) == meta["name"] and (p.get("status") or {}).get("podIP") and _ready(p)
    ]
    accounts = {p["spec"].get("serviceAccountName") or "default" for p in serving}
    return {
        "type": "waypoint",
        "key": f"{meta['namespace']}/{meta['name']}",
        "name": meta["name"],
        "namespace": meta["namespace"],
        # Istio runs a waypoint as the ServiceAccount named after its Gateway.
        "serviceAccount": accounts.pop() if len(accounts) == 1 else meta["name"],
        "addresses": sorted(p["status"]["podIP"] for p in serving),
    }


def _identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("namespace", "name", "annotations")}


def _content_key(obj: Obj) -> str:
    meta = obj["metadata"]
    what = [obj.get("apiVersion"), obj["kind"], _identity(meta), obj.get("spec")]
    return json.dumps(what, sort_keys=True, default=str)


@functools.lru_cache(maxsize=8192)
def _problems(content: str) -> tuple[Problem, ...]:
    """Validation by content: the CEL rules cost ~1.5 ms an object, and every pod change
    recompiles the mesh while its policies stay as they were."""
    api_version, kind, meta, spec = json.loads(content)
    obj = {"apiVersion": api_version, "kind": kind, "metadata": meta}
    return tuple(istio_problems({**obj, "spec": spec} if spec is not None else obj))


_STAND_INS = {
    "AuthorizationPolicy": ("policy", invalid.policy_stand_in),
    "PeerAuthentication": ("peerauth", invalid.peer_authentication_stand_in),
}


def _spec_resource(obj: Obj) -> Resource:
    """An Istio object as its resource; one Istio's validation refuses (the Kubernetes API has
    no webhook of ours) as its fail-closed stand-in, with the reason (controller/config/invalid)."""
    meta = obj["metadata"]
    kind, stand_in = _STAND_INS[obj["kind"]]
    res: Resource = {
        "type": kind,
        "key": f"{meta['namespace']}/{meta['name']}",
        "name": meta["name"],
        "namespace": meta["namespace"],
        "spec": obj.get("spec") or {},
    }
    if obj["kind"] == "AuthorizationPolicy" and istio_rules.is_dry_run(meta):
        res["dryRun"] = True
    if problems := _problems(_content_key(obj)):
        res["spec"] = stand_in(obj.get("spec"), problems)
        res["invalid"] = invalid.reason(problems)
    else:
        res["spec"] = pruned(res["spec"])
    return res


def _meshconfig(configmap: Obj) -> Resource | None:
    """Istio's MeshConfig, from its ConfigMap; None for other ConfigMaps, and for one whose
    MeshConfig is invalid (`ambientctl apply` refuses it; one the Kubernetes API let in leaves
    every proxy on the defaults)."""
    meta = configmap["metadata"]
    if not mesh.is_mesh_configmap(meta["namespace"], meta["name"]):
        return None
    try:
        spec = mesh.load((configmap.get("data") or {}).get(mesh.CONFIGMAP_KEY, ""))
        mesh.settings(spec)
    except mesh.MeshConfigError:
        return None
    return {"type": "meshconfig", "key": "mesh", "spec": spec}


@dataclass(frozen=True)
class Mesh:
    """Every resource of the mesh by key, and each workload's remote form (without labels),
    built once per version so that every ztunnel's view shares the same objects: at 10 000
    pods and 100 nodes, per-view copies would be a million dicts in the controller."""

    resources: dict[str, Resource]
    remote: dict[str, Resource]


def workloads_and_services(objects: ObjectSet) -> tuple[list[Resource], dict[str, list[Obj]]]:
    """The workload and service resources (endpoints included), and the pods by namespace:
    what a Service load-balancer needs, without compiling (and validating) every policy."""
    namespaces = {ns["metadata"]["name"]: ns for ns in objects.list("Namespace")}
    pods_by_ns: dict[str, list[Obj]] = {}
    services_by_ns: dict[str, list[Obj]] = {}
    for svc in objects.list("Service"):
        services_by_ns.setdefault(svc["metadata"]["namespace"], []).append(svc)
    out: list[Resource] = []
    for pod in objects.list("Pod"):
        ns = pod["metadata"]["namespace"]
        pods_by_ns.setdefault(ns, []).append(pod)
        if w := _workload(pod, namespaces.get(ns), services_by_ns.get(ns, [])):
            out.append(w)
    for ns, services in services_by_ns.items():
        out += [_service(svc, pods_by_ns.get(ns, []), namespaces.get(ns)) for svc in services]
    return out, pods_by_ns


def compile_mesh(objects: ObjectSet) -> Mesh:
    """Every resource of the mesh, by key."""
    out, pods_by_ns = workloads_and_services(objects)
    for gateway in objects.list("Gateway"):
        if wp := _waypoint(gateway, pods_by_ns.get(gateway["metadata"]["namespace"], [])):
            out.append(wp)
    out += [_spec_resource(o) for o in objects.list("AuthorizationPolicy")]
    out += [_spec_resource(o) for o in objects.list("PeerAuthentication")]
    out += [r for o in objects.list("ConfigMap") if (r := _meshconfig(o))]
    resources = {key_of(r): r for r in out}
    remote = {
        key: {**r, "labels": {}}
        for key, r in resources.items()
        if r["type"] == "workload" and r["labels"]
    }
    return Mesh(resources, remote)


def view(mesh: Mesh, proxy: Proxy) -> dict[str, Resource]:
    """The part of the mesh config one proxy needs."""
    if proxy.kind == "waypoint":
        return dict(mesh.resources)
    local_ns = {
        r["namespace"]
        for r in mesh.resources.values()
        if r["type"] == "workload" and r["node"] == proxy.node
    }
    out: dict[str, Resource] = {}
    for key, res in mesh.resources.items():
        kind = res["type"]
        if kind == "workload" and res["node"] != proxy.node and key in mesh.remote:
            out[key] = mesh.remote[key]
        elif kind in {"workload", "service", "waypoint", "crl"}:
            out[key] = res
        elif kind == "meshconfig":
            continue  # the waypoint's settings: a ztunnel (or an older one) has no use for them
        elif res["namespace"] in local_ns or res["namespace"] == ROOT_NAMESPACE:
            if kind == "policy" and (res["spec"].get("targetRefs") or res["spec"].get("targetRef")):
                continue  # bound to a waypoint: enforced there, not at ztunnel
            out[key] = res
    return out


def diff(
    old: Mapping[str, Resource], new: Mapping[str, Resource]
) -> tuple[list[Resource], list[str]]:
    """Upserts and removals turning `old` into `new`."""
    upserts = [res for key, res in new.items() if old.get(key) != res]
    removes = sorted(key for key in old if key not in new)
    return upserts, removes
