"""The snapshot ztunnel judges connections against: workloads by IP, services by VIP, compiled
policies, PeerAuthentication modes.

Built (pure) from the mesh config the controller streamed (`api.meshconfig` resources) for one
config version. An IP claimed by two workloads is *ambiguous* and resolves to nothing
(RELIABILITY F-9: reject rather than guess).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.meshconfig import Resource
from api.objects import Obj
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
    waypoint: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    vips: tuple[str, ...]
    ports: Mapping[int, int]  # service port → target port
    endpoints: tuple[str, ...]  # workload uids, ready ones
    waypoint: str = ""
    protocols: Mapping[int, str] = field(default_factory=dict)  # service port → "http"...

    @property
    def host(self) -> str:
        """Istio's `destination_service` value."""
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Waypoint:
    name: str
    namespace: str
    identity: SpiffeId
    addresses: tuple[str, ...]  # its ready pods

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
    by_uid: Mapping[str, Workload] = field(default_factory=dict)
    by_vip: Mapping[str, Service] = field(default_factory=dict)
    waypoints: Mapping[str, Waypoint] = field(default_factory=dict)  # by "namespace/name"
    unconverged: frozenset[str] = frozenset()
    """Namespaces (or "*") whose policies a rejected update changed: inbound to their workloads
    is refused until an update is accepted again (RELIABILITY F-11)."""

    def workload(self, ip: str) -> Workload | None:
        return self.by_ip.get(ip)

    def local(self, ip: str) -> Workload | None:
        w = self.by_ip.get(ip)
        return w if w is not None and w.node == self.node else None

    def service(self, vip: str) -> Service | None:
        return self.by_vip.get(vip)

    def waypoint_identity(self, namespace: str, name: str) -> SpiffeId:
        """Who may speak for the waypoint `name` of `namespace`: its pods' identity, or, before
        its Gateway is known, the ServiceAccount Istio would run it as (its name)."""
        found = self.waypoints.get(f"{namespace}/{name}")
        return found.identity if found else SpiffeId(self.trust_domain, namespace, name)

    def in_mesh_space(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in net for net in self.mesh_cidrs)

    def local_workloads(self) -> list[Workload]:
        return sorted((w for w in self.by_uid.values() if w.node == self.node), key=lambda w: w.key)


def _workload(res: Resource, trust_domain: str) -> Workload:
    return Workload(
        uid=res["uid"],
        name=res["name"],
        namespace=res["namespace"],
        service_account=res["serviceAccount"],
        node=res["node"],
        ip=res["ip"],
        labels=dict(res["labels"]),
        enrolled=res["enrolled"],
        identity=SpiffeId(trust_domain, res["namespace"], res["serviceAccount"]),
        waypoint=res.get("waypoint", ""),
    )


def _service(res: Resource) -> Service:
    return Service(
        name=res["name"],
        namespace=res["namespace"],
        vips=tuple(res["vips"]),
        ports={p["port"]: p["targetPort"] for p in res["ports"]},
        endpoints=tuple(res["endpoints"]),
        waypoint=res.get("waypoint", ""),
        protocols={p["port"]: p.get("protocol", "") for p in res["ports"]},
    )


def _waypoint(res: Resource, trust_domain: str) -> Waypoint:
    return Waypoint(
        name=res["name"],
        namespace=res["namespace"],
        identity=SpiffeId(trust_domain, res["namespace"], res["serviceAccount"]),
        addresses=tuple(res["addresses"]),
    )


def policy_object(res: Resource, spec: Mapping[str, Any] | None = None) -> Obj:
    """A policy resource as the object its compilers read (with the controller's verdicts)."""
    return {
        "metadata": {"namespace": res["namespace"], "name": res["name"]},
        "spec": res["spec"] if spec is None else spec,
        "invalid": res.get("invalid", ""),
        "dryRun": res.get("dryRun", False),
    }


def build(
    resources: Mapping[str, Resource],
    node: str,
    trust_domain: str,
    version: int,
    mesh_cidrs: Iterable[str] = DEFAULT_MESH_CIDRS,
) -> Snapshot:
    """`resources` are validated (`api.meshconfig.apply_update`)."""
    by_ip: dict[str, Workload] = {}
    by_uid: dict[str, Workload] = {}
    ambiguous: set[str] = set()
    by_type: dict[str, list[Resource]] = {}
    for key in sorted(resources):
        by_type.setdefault(resources[key]["type"], []).append(resources[key])
    for res in by_type.get("workload", []):
        w = _workload(res, trust_domain)
        by_uid[w.uid] = w
        if w.ip in by_ip and by_ip[w.ip].uid != w.uid:
            ambiguous.add(w.ip)
        by_ip[w.ip] = w
    for ip in ambiguous:
        del by_ip[ip]
    by_vip = {vip: svc for svc in map(_service, by_type.get("service", [])) for vip in svc.vips}
    policies = tuple(
        p for r in by_type.get("policy", []) if (p := compile_policy(policy_object(r)))
    )
    return Snapshot(
        revision=version,
        node=node,
        trust_domain=trust_domain,
        by_ip=by_ip,
        ambiguous=frozenset(ambiguous),
        policies=policies,
        peer_auths=tuple(policy_object(r) for r in by_type.get("peerauth", [])),
        mesh_cidrs=tuple(ipaddress.ip_network(c) for c in mesh_cidrs),
        by_uid=by_uid,
        by_vip=by_vip,
        waypoints={
            wp.key: wp for wp in (_waypoint(r, trust_domain) for r in by_type.get("waypoint", []))
        },
    )


def from_objects(
    objects: ObjectSet,
    node: str,
    trust_domain: str,
    mesh_cidrs: Iterable[str] = DEFAULT_MESH_CIDRS,
) -> Snapshot:
    """What the controller would stream to this node's ztunnel, compiled in place (the static
    config dev mode, and tests)."""
    from controller.config.compile import Proxy, compile_mesh, view  # noqa: PLC0415 - dev mode

    resources = view(compile_mesh(objects), Proxy("ztunnel", node))
    return build(resources, node, trust_domain, objects.revision, mesh_cidrs)
