"""What the API server does to an object before it is stored, as pure functions.

Defaulting of server-owned fields (uid, creationTimestamp), the namespace-exists rule, scheduling
(`spec.nodeName`), IPAM (`status.podIP`, a Service's `spec.clusterIP`), pod spec immutability,
and cascading namespace deletion.
Every function works on an ObjectSet copy; the caller commits it only when all of them succeeded,
so bad input leaves the store as it was.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api import mesh, names
from api.ambient import ROOT_NAMESPACE
from api.errors import ObjectError
from api.objects import DEFAULT_NAMESPACE, KINDS, Obj, ObjectRef, ref_of
from localcluster.store import ObjectSet
from localcluster.topology import NodePlan, allocate_pod_ip, pick_node

NAMESPACED_KINDS = tuple(k.name for k in KINDS.values() if k.namespaced)  # a namespace's contents
_METADATA_USER_FIELDS = ("labels", "annotations")
# kind's service subnet; .1 (kubernetes) and .10 (kube-dns) are by convention not handed out.
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
_FIRST_SERVICE_IP = 11
_SERVER_METADATA = ("uid", "creationTimestamp", "resourceVersion")


@dataclass(frozen=True)
class Change:
    ref: ObjectRef
    action: str  # created | configured | unchanged | deleted
    obj: Obj


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def namespace_object(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _user_view(obj: Obj) -> tuple[Any, ...]:
    meta = obj["metadata"]
    user_meta = {k: meta.get(k) or {} for k in _METADATA_USER_FIELDS}
    return (user_meta, obj.get("spec"))


def _schedule_pod(store: ObjectSet, pod: Obj, nodes: list[NodePlan], ref: ObjectRef) -> None:
    by_name = {n.name: n for n in nodes}
    pods = store.list("Pod")
    wanted = pod["spec"].get("nodeName")
    if wanted is not None and wanted not in by_name:
        known = ", ".join(by_name)
        raise ObjectError(str(ref), "spec.nodeName", f"node {wanted!r} not found (nodes: {known})")
    if wanted is None:
        load: dict[str, int] = {}
        for p in pods:
            load[p["spec"]["nodeName"]] = load.get(p["spec"]["nodeName"], 0) + 1
        wanted = pick_node(nodes, load).name
    node = by_name[wanted]
    in_use = {p["status"]["podIP"] for p in pods if p["spec"]["nodeName"] == node.name}
    try:
        ip = allocate_pod_ip(node, in_use)
    except ValueError as exc:
        raise ObjectError(str(ref), "status.podIP", str(exc)) from None
    pod["spec"]["nodeName"] = node.name
    pod["status"] = {"podIP": ip, "podIPs": [{"ip": ip}], "hostIP": node.node_ip}


def _assign_cluster_ip(store: ObjectSet, svc: Obj, old: Obj | None, ref: ObjectRef) -> None:
    """Kubernetes' service IPAM: a free VIP from the service CIDR, kept for the service's life.
    `None` (headless) and a user-chosen free address inside the CIDR are honoured."""
    spec = svc["spec"]
    wanted = spec.get("clusterIP")
    if old is not None:
        kept = old["spec"].get("clusterIP")
        if wanted not in (None, "", kept):
            raise ObjectError(str(ref), "spec.clusterIP", "field is immutable")
        spec["clusterIP"] = kept
        return
    if wanted == "None":
        return
    in_use = {s["spec"].get("clusterIP") for s in store.list("Service")}
    if wanted:
        try:
            address = ipaddress.ip_address(wanted)
        except ValueError:
            raise ObjectError(str(ref), "spec.clusterIP", f"{wanted!r} is not an IP") from None
        if address not in SERVICE_CIDR or wanted in in_use:
            why = "already allocated" if wanted in in_use else f"not in {SERVICE_CIDR}"
            raise ObjectError(str(ref), "spec.clusterIP", f"{wanted}: {why}")
        return
    for host in SERVICE_CIDR.hosts():
        if int(host) - int(SERVICE_CIDR.network_address) >= _FIRST_SERVICE_IP and (
            str(host) not in in_use
        ):
            spec["clusterIP"] = str(host)
            return
    raise ObjectError(str(ref), "spec.clusterIP", f"service range {SERVICE_CIDR} is full")


def _check_pod_update(old: Obj, new: Obj, ref: ObjectRef) -> None:
    if new["spec"].get("nodeName") is None:
        new["spec"]["nodeName"] = old["spec"]["nodeName"]
    if new["spec"] != old["spec"]:
        changed = sorted(
            k
            for k in new["spec"].keys() | old["spec"].keys()
            if new["spec"].get(k) != old["spec"].get(k)
        )
        raise ObjectError(
            str(ref), f"spec.{changed[0]}", "pod spec is immutable (delete the pod and apply again)"
        )
    new["status"] = old["status"]


def apply(store: ObjectSet, incoming: list[Obj], nodes: list[NodePlan]) -> list[Change]:
    """Admit `incoming` in order into `store` (mutated); raise ObjectError on the first problem."""
    changes = []
    for raw in incoming:
        obj = {**raw, "metadata": dict(raw["metadata"])}
        ref = ref_of(obj)
        if ref.namespace and store.get(ObjectRef("Namespace", "", ref.namespace)) is None:
            raise ObjectError(
                str(ref), "metadata.namespace", f"namespace {ref.namespace!r} not found"
            )
        old = store.get(ref)
        if ref.kind == "Service":
            obj["spec"] = dict(obj["spec"])
            _assign_cluster_ip(store, obj, old, ref)
        meta = obj["metadata"]
        for key in _SERVER_METADATA:
            meta.pop(key, None)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if ref.kind == "Pod":
                _schedule_pod(store, obj, nodes, ref)
            action = "created"
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            if ref.kind == "Pod":
                _check_pod_update(old, obj, ref)
            if _user_view(obj) == _user_view(old):
                changes.append(Change(ref, "unchanged", old))
                continue
            action = "configured"
        store.put(obj)
        changes.append(Change(ref, action, obj))
    _check_custom_providers(store, [c.obj for c in changes if c.action != "unchanged"])
    return changes


def _check_custom_providers(store: ObjectSet, admitted: list[Obj]) -> None:
    """A CUSTOM policy names a provider of the mesh's MeshConfig (as it stands after this
    apply). Istio's webhook lets a missing one in and its proxies then deny what the policy
    matches (fail closed); we refuse it at apply, where the user can still fix it."""
    policies = [
        o
        for o in admitted
        if o["kind"] == "AuthorizationPolicy" and (o.get("spec") or {}).get("action") == "CUSTOM"
    ]
    if not policies:
        return
    configmap = store.get(ObjectRef("ConfigMap", ROOT_NAMESPACE, mesh.CONFIGMAP))
    data = (configmap or {}).get("data") or {}
    available = mesh.settings(mesh.load(data.get(mesh.CONFIGMAP_KEY, ""))).extension_providers
    for policy in policies:
        name = policy["spec"]["provider"]["name"]
        if name not in available:
            raise ObjectError(
                str(ref_of(policy)),
                "spec.provider.name",
                f'available providers are [{" ".join(available)}] but found "{name}" '
                f"(MeshConfig extensionProviders, ConfigMap {ROOT_NAMESPACE}/{mesh.CONFIGMAP})",
            )


def delete(store: ObjectSet, refs: list[ObjectRef], *, ignore_missing: bool) -> list[Change]:
    """Remove `refs` (a Namespace takes everything in it along); raise if one is missing."""
    changes: list[Change] = []
    for ref in refs:
        if ref == ObjectRef("Namespace", "", DEFAULT_NAMESPACE):
            raise ObjectError(str(ref), "", "the default namespace cannot be deleted")
        obj = store.remove(ref)
        if obj is None:
            if ignore_missing or any(c.ref == ref for c in changes):
                continue
            raise ObjectError(str(ref), "", "not found")
        if ref.kind == "Namespace":
            for kind in NAMESPACED_KINDS:
                for inner in store.list(kind, ref.name):
                    inner_ref = ref_of(inner)
                    store.remove(inner_ref)
                    changes.append(Change(inner_ref, "deleted", inner))
        changes.append(Change(ref, "deleted", obj))
    return changes


def parse_label_changes(args: list[str]) -> dict[str, str | None]:
    """kubectl syntax: `key=value` sets, `key-` removes. Raises ValueError naming the bad one."""
    changes: dict[str, str | None] = {}
    for arg in args:
        if arg.endswith("-") and "=" not in arg:
            key, value = arg[:-1], None
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise ValueError(f"label {arg!r}: expected key=value or key-")
        reason = names.label_key(key) or (names.label_value(value) if value is not None else None)
        if reason:
            raise ValueError(reason)
        changes[key] = value
    if not changes:
        raise ValueError("at least one label update is required")
    return changes


def label(
    store: ObjectSet,
    ref: ObjectRef,
    changes: dict[str, str | None],
    *,
    overwrite: bool,
) -> Change:
    """Set/remove labels on one object, with kubectl's `--overwrite` rule."""
    old = store.get(ref)
    if old is None:
        raise ObjectError(str(ref), "", "not found")
    obj = {**old, "metadata": dict(old["metadata"])}
    labels = dict(obj["metadata"].get("labels") or {})
    for key, value in changes.items():
        if value is not None and key in labels and labels[key] != value and not overwrite:
            raise ObjectError(
                str(ref),
                "metadata.labels",
                f"label {key!r} already has value {labels[key]!r} (use --overwrite to change it)",
            )
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    if labels == (old["metadata"].get("labels") or {}):
        return Change(ref, "unchanged", old)
    obj["metadata"]["labels"] = labels
    store.put(obj)
    return Change(ref, "labeled", obj)
