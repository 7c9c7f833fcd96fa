"""The snapshot ztunnel judges connections against: workloads by IP, compiled policies, modes.

Built (pure) from the cluster's objects for one config revision. An IP claimed by two pods is
*ambiguous* and resolves to nothing (RELIABILITY F-9: reject rather than guess).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.ambient import enrolled
from api.objects import Obj, ObjectRef
from api.spiffe import SpiffeId
from localcluster.store import ObjectSet
from ztunnel.state.policy import CompiledPolicy, compile_policy

# Addresses that belong to the mesh's own address space: an unknown IP inside them is "not synced
# yet", never "external" (RELIABILITY decision 6: no plaintext fallback for those).
DEFAULT_MESH_CIDRS = ("10.244.0.0/16", "10.96.0.0/12")


@dataclass(frozen=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str
    node: str
    ip: str
    labels: Mapping[str, str]
    enrolled: bool
    identity: SpiffeId

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Snapshot:
    revision: int
    node: str
    trust_domain: str
    by_ip: Mapping[str, Workload]
    ambiguous: frozenset[str]
    policies: tuple[CompiledPolicy, ...]
    peer_auths: tuple[Obj, ...]
    mesh_cidrs: tuple[Any, ...] = field(default=())

    def workload(self, ip: str) -> Workload | None:
        return self.by_ip.get(ip)

    def local(self, ip: str) -> Workload | None:
        w = self.by_ip.get(ip)
        return w if w is not None and w.node == self.node else None

    def in_mesh_space(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in net for net in self.mesh_cidrs)


def _workload(pod: Obj, namespace: Obj | None, trust_domain: str) -> Workload | None:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return None
    return Workload(
        uid=meta["uid"],
        name=meta["name"],
        namespace=meta["namespace"],
        service_account=spec.get("serviceAccountName", "default"),
        node=spec.get("nodeName", ""),
        ip=ip,
        labels=dict(meta.get("labels") or {}),
        enrolled=enrolled(pod, namespace),
        identity=SpiffeId(
            trust_domain, meta["namespace"], spec.get("serviceAccountName", "default")
        ),
    )


def build(
    objects: ObjectSet,
    node: str,
    trust_domain: str,
    mesh_cidrs: Iterable[str] = DEFAULT_MESH_CIDRS,
) -> Snapshot:
    by_ip: dict[str, Workload] = {}
    ambiguous: set[str] = set()
    for pod in objects.list("Pod"):
        ns = objects.get(ObjectRef("Namespace", "", pod["metadata"]["namespace"]))
        w = _workload(pod, ns, trust_domain)
        if w is None:
            continue
        if w.ip in by_ip and by_ip[w.ip].uid != w.uid:
            ambiguous.add(w.ip)
        by_ip[w.ip] = w
    for ip in ambiguous:
        del by_ip[ip]
    policies = tuple(p for o in objects.list("AuthorizationPolicy") if (p := compile_policy(o)))
    return Snapshot(
        revision=objects.revision,
        node=node,
        trust_domain=trust_domain,
        by_ip=by_ip,
        ambiguous=frozenset(ambiguous),
        policies=policies,
        peer_auths=tuple(objects.list("PeerAuthentication")),
        mesh_cidrs=tuple(ipaddress.ip_network(c) for c in mesh_cidrs),
    )
