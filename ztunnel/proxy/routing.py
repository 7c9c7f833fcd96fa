"""Where a connection goes and whether it may (pure; table-tested). The listeners call these with
the addresses the kernel gave them and act on the plan; no I/O here.

Outbound (15001, or the 15080 SOCKS5 test entry): the source must be a local enrolled pod; a
destination fronted by a waypoint (a Service, or a workload, carrying `istio.io/use-waypoint`) is
reached through one of the waypoint's pods, over HBONE as the source's identity with the original
destination as `:authority` (no waypoint pod ready: refused, never sent around it); a
Service VIP is resolved to one of its ready endpoints and the service port to its target port
(ztunnel's load balancing; the caller supplies the random `choice`); an enrolled destination is
reached over HBONE at `<dst ip>:15008` as the source's identity, expecting the destination's
identity; a known non-mesh destination, or an address outside the mesh's space, is passed
through; anything else is refused (unknown inside the mesh space = not synced yet).
Inbound (15008 after mTLS; 15006 plaintext): the target must be a local enrolled pod, never one of
ztunnel's own ports or loopback, match the connection's original destination, come from its
waypoint if it has one, and pass policy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from api import ports
from api.meshconfig import ALL_NAMESPACES
from ztunnel.state.policy import Connection, Decision, evaluate, mtls_mode
from ztunnel.state.workloads import Service, Snapshot, Waypoint, Workload


@dataclass(frozen=True)
class Outbound:
    action: str  # "hbone" | "passthrough" | "reject"
    reason: str
    src: Workload | None = None
    dst: Workload | None = None
    target: tuple[str, int] | None = None  # where to connect: the endpoint behind a VIP
    service: Service | None = None
    waypoint: Waypoint | None = None
    hop: str = ""  # the waypoint pod carrying the tunnel (target: the original destination)


@dataclass(frozen=True)
class Inbound:
    allowed: bool
    reason: str
    status: int  # HTTP status for HBONE: 200, 400, 401 (policy), 503
    dst: Workload | None = None
    decision: Decision | None = None
    waypoint_principal: str | None = None  # the destination's waypoint, when it has one


def plan_outbound(  # noqa: PLR0911 - one return per rule, in order
    snap: Snapshot | None, src_ip: str, dst_ip: str, dst_port: int, choice: int = 0
) -> Outbound:
    if snap is None:
        return Outbound("reject", "no_config")  # fail closed until the first snapshot
    src = snap.local(src_ip)
    if src is None or not src.enrolled:
        return Outbound("reject", "unknown_source")
    if (svc := snap.service(dst_ip)) is not None:
        if svc.waypoint and dst_port in svc.ports:
            return _via_waypoint(snap, src, (dst_ip, dst_port), choice, svc=svc)
        return _via_service(snap, src, svc, dst_port, choice)
    if dst_ip in snap.ambiguous:
        return Outbound("reject", "ambiguous_destination", src)
    dst = snap.workload(dst_ip)
    target = (dst_ip, dst_port)
    if dst is not None and dst.enrolled and dst.waypoint:
        return _via_waypoint(snap, src, target, choice, dst=dst)
    if dst is not None:
        return (
            Outbound("hbone", "mesh", src, dst, target)
            if dst.enrolled
            else Outbound("passthrough", "destination_not_in_mesh", src, dst, target)
        )
    if snap.in_mesh_space(dst_ip):
        return Outbound("reject", "unknown_destination", src)
    return Outbound("passthrough", "external", src, None, target)


def _via_service(snap: Snapshot, src: Workload, svc: Service, port: int, choice: int) -> Outbound:
    target_port = svc.ports.get(port)
    if target_port is None:
        return Outbound("reject", "unknown_service_port", src, service=svc)
    ready = [
        w for uid in svc.endpoints if (w := snap.by_uid.get(uid)) and w.ip not in snap.ambiguous
    ]
    if not ready:
        return Outbound("reject", "no_healthy_upstream", src, service=svc)
    dst = ready[choice % len(ready)]
    action = "hbone" if dst.enrolled else "passthrough"
    return Outbound(action, "service", src, dst, (dst.ip, target_port), svc)


def _via_waypoint(
    snap: Snapshot,
    src: Workload,
    target: tuple[str, int],
    choice: int,
    *,
    svc: Service | None = None,
    dst: Workload | None = None,
) -> Outbound:
    fronted = svc or dst
    assert fronted is not None
    waypoint = snap.waypoints.get(f"{fronted.namespace}/{fronted.waypoint}")
    if waypoint is None or not waypoint.addresses:
        return Outbound("reject", "waypoint_unavailable", src, dst, service=svc)
    hop = waypoint.addresses[choice % len(waypoint.addresses)]
    return Outbound("hbone", "waypoint", src, dst, target, svc, waypoint, hop)


def plan_inbound(  # noqa: PLR0911 - one return per rule, in order
    snap: Snapshot | None,
    *,
    target_ip: str,
    target_port: int,
    original_dst_ip: str,
    src_ip: str,
    src_principal: str | None,
    listener_uid: str | None = None,
) -> Inbound:
    """For HBONE `src_principal` is the verified peer, and `listener_uid` the pod whose
    certificate the connection was accepted with; for plaintext (15006) both are None."""
    if snap is None:
        return Inbound(False, "no_config", 503)
    if target_port in ports.ZTUNNEL_PORTS:
        return Inbound(False, "self_call", 400)  # H-4; loopback is never a pod: unknown below
    if target_ip != original_dst_ip:
        return Inbound(False, "target_mismatch", 400)  # H-3
    dst = snap.local(target_ip)
    if dst is None or not dst.enrolled:
        reason = "ambiguous_destination" if target_ip in snap.ambiguous else "unknown_destination"
        return Inbound(False, reason, 400)
    if listener_uid is not None and dst.uid != listener_uid:
        # F-9: the IP is another pod's now. The peer was answered with the old pod's
        # certificate: nothing reaches the new one under it (ztunnel checks the netns inode).
        return Inbound(False, "workload_replaced", 503, dst)
    if snap.unconverged and ({dst.namespace, ALL_NAMESPACES} & snap.unconverged):
        return Inbound(False, "policy_not_synced", 503, dst)  # F-11: fail closed, not open
    waypoint = snap.waypoint_identity(dst.namespace, dst.waypoint) if dst.waypoint else None
    if waypoint is not None and src_principal != waypoint.principal:
        return Inbound(False, "bypassed_waypoint", 401, dst)  # only its waypoint may reach it
    if src_principal is None:
        mode = mtls_mode(snap.peer_auths, dst.namespace, dst.labels, target_port)
        if mode == "STRICT":
            return Inbound(False, "plaintext_refused_strict_mtls", 401, dst)
    connection = Connection(src_ip, src_principal, target_ip, target_port)
    decision = evaluate(snap.policies, dst.namespace, dst.labels, connection)
    if not decision.allowed:
        return Inbound(False, decision.reason, 401, dst, decision)
    return Inbound(
        True, decision.reason, 200, dst, decision, waypoint.principal if waypoint else None
    )


def forwarded_for(value: str | None) -> str | None:
    """The client IP of the first element of an RFC 7239 `Forwarded` header (`for=1.2.3.4`,
    `for="[2001:db8::1]:80"`), or None if there is none that parses as an IP."""
    first = (value or "").split(",", 1)[0]
    for pair in first.split(";"):
        name, _, raw = pair.strip().partition("=")
        if name.lower() != "for":
            continue
        node = raw.strip().strip('"')
        if node.startswith("["):
            node = node[1 : node.find("]")] if "]" in node else ""
        elif node.count(":") == 1:
            node = node.split(":", 1)[0]
        try:
            return str(ipaddress.ip_address(node))
        except ValueError:
            return None
    return None


def original_source(
    plan: Inbound, src_ip: str, principal: str | None, forwarded: str | None
) -> str:
    """Who the connection is from, for telemetry: the `Forwarded` client when the peer is the
    destination's own waypoint (trusted from it alone, RELIABILITY H-5), else the peer."""
    dst = plan.dst
    if dst is None or not dst.waypoint or plan.waypoint_principal != principal:
        return src_ip
    return forwarded_for(forwarded) or src_ip
