"""What one waypoint knows and decides (pure, table-tested): the mesh snapshot, its bound
policies, which destinations it fronts, and where a request goes next.

- Fronted: a Service of the waypoint's namespace labelled `istio.io/use-waypoint=<its name>`
  (addressed by VIP and service port), or a workload fronted by it (addressed by pod IP). A
  tunnel for anything else is refused: a waypoint is not an open relay.
- Protocol: the Service port's (`appProtocol` or name prefix, as Istio); unknown ("") is
  sniffed by the proxy.
- Policy: HTTP requests by the L7 form of the bound policies (`authz`); TCP by their L4 form
  (`ztunnel.state.policy`), where an ALLOW rule with HTTP-only fields matches nothing and a
  DENY rule loses them — more restrictive either way, as Istio does for TCP at a waypoint.
- Next hop: a ready endpoint of the Service (target port), or the workload itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from api.mesh import DEFAULT_NORMALIZATION, Normalization
from api.meshconfig import Resource, settings_of
from ztunnel.state import workloads
from ztunnel.state.policy import CompiledPolicy, Connection, Decision, compile_policy, decide
from ztunnel.state.workloads import Service, Snapshot, Workload
from ztunnel.waypoint.authz import L7Policy, Request, compile_l7, evaluate_l7


@dataclass(frozen=True)
class Target:
    """A destination this waypoint fronts, as the client addressed it."""

    ip: str
    port: int
    service: Service | None
    workload: Workload | None  # when addressed by pod IP
    protocol: str  # "http" | "http2" | "tcp" | "" (unknown: sniff)
    services: tuple[str, ...] = ()  # whose bound policies judge it (pod IP: all fronting it)

    @property
    def target_port(self) -> int:
        """The workload's port: what policy `ports` and `destination.port` compare."""
        return self.service.ports[self.port] if self.service else self.port


@dataclass(frozen=True)
class WaypointState:
    namespace: str
    name: str
    snapshot: Snapshot
    l7: tuple[L7Policy, ...]
    tcp: tuple[tuple[L7Policy, CompiledPolicy], ...]  # each bound policy's L4 form
    normalization: Normalization = DEFAULT_NORMALIZATION  # MeshConfig pathNormalization
    trusted_proxies: int = 0  # MeshConfig defaultConfig.gatewayTopology.numTrustedProxies


def _unbound(res: Resource) -> dict[str, object]:
    spec = {k: v for k, v in res["spec"].items() if k not in ("targetRefs", "targetRef")}
    return workloads.policy_object(res, spec)


def build(
    resources: Mapping[str, Resource], namespace: str, name: str, trust_domain: str, version: int
) -> WaypointState:
    snapshot = workloads.build(resources, "", trust_domain, version)
    l7: list[L7Policy] = []
    tcp: list[tuple[L7Policy, CompiledPolicy]] = []
    for res in resources.values():
        if res["type"] != "policy" or res["namespace"] != namespace:
            continue
        bound = compile_l7(workloads.policy_object(res))
        if bound is None:
            continue
        l7.append(bound)
        if (l4 := compile_policy(_unbound(res))) is not None:
            tcp.append((bound, l4))
    key = lambda p: p.key  # noqa: E731 - a sort key
    settings = settings_of(resources)
    return WaypointState(
        namespace,
        name,
        snapshot,
        tuple(sorted(l7, key=key)),
        tuple(sorted(tcp, key=lambda t: t[0].key)),
        settings.path_normalization,
        settings.num_trusted_proxies,
    )


def resolve(state: WaypointState, ip: str, port: int) -> Target | str:
    """The fronted destination `ip:port`, or why the tunnel is refused."""
    snap = state.snapshot
    if (svc := snap.service(ip)) is not None:
        if (svc.namespace, svc.waypoint) != (state.namespace, state.name):
            return "not_fronted"
        if port not in svc.ports:
            return "unknown_service_port"
        return Target(ip, port, svc, None, svc.protocols.get(port, ""), (svc.name,))
    found = snap.workload(ip)
    if found is None or (found.namespace, found.waypoint) != (state.namespace, state.name):
        return "not_fronted"
    # Addressed directly, a workload is still judged by what guards each Service in front of
    # it: a policy bound to a Service cannot be side-stepped by dialing its pod.
    fronting = sorted(
        {
            svc.name
            for svc in snap.by_vip.values()
            if svc.namespace == state.namespace and found.uid in svc.endpoints
        }
    )
    protocols = {
        proto
        for svc in snap.by_vip.values()
        if svc.name in fronting
        for svc_port, target in svc.ports.items()
        if target == port and (proto := svc.protocols.get(svc_port, ""))
    }
    protocol = protocols.pop() if len(protocols) == 1 else ""
    return Target(ip, port, None, found, protocol, tuple(fronting))


def next_hop(state: WaypointState, target: Target, choice: int) -> tuple[Workload, int] | None:
    """The workload and port to connect to; None when a Service has no ready endpoint."""
    if target.workload is not None:
        return target.workload, target.port
    assert target.service is not None
    snap = state.snapshot
    ready = [w for uid in target.service.endpoints if (w := snap.by_uid.get(uid)) is not None]
    if not ready:
        return None
    return ready[choice % len(ready)], target.service.ports[target.port]


def authorize_http(state: WaypointState, target: Target, request: Request) -> Decision:
    return evaluate_l7(state.l7, state.namespace, state.name, target.services, request)


def authorize_tcp(state: WaypointState, target: Target, connection: Connection) -> Decision:
    bound = [l4 for l7, l4 in state.tcp if l7.binds(state.namespace, state.name, target.services)]
    return decide(bound, connection)
