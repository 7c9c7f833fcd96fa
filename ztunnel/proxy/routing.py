"""Where a connection goes and whether it may (pure; table-tested). The listeners call these with
the addresses the kernel gave them and act on the plan; no I/O here.

Outbound (15001, or the 15080 SOCKS5 test entry): the source must be a local enrolled pod; a
Service VIP is resolved to one of its ready endpoints and the service port to its target port
(ztunnel's load balancing; the caller supplies the random `choice`); an enrolled destination is
reached over HBONE at `<dst ip>:15008` as the source's identity, expecting the destination's
identity; a known non-mesh destination, or an address outside the mesh's space, is passed
through; anything else is refused (unknown inside the mesh space = not synced yet).
Inbound (15008 after mTLS; 15006 plaintext): the target must be a local enrolled pod, never one of
ztunnel's own ports or loopback, match the connection's original destination, and pass policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from api import ports
from api.meshconfig import ALL_NAMESPACES
from ztunnel.state.policy import Connection, Decision, evaluate, mtls_mode
from ztunnel.state.workloads import Service, Snapshot, Workload


@dataclass(frozen=True)
class Outbound:
    action: str  # "hbone" | "passthrough" | "reject"
    reason: str
    src: Workload | None = None
    dst: Workload | None = None
    target: tuple[str, int] | None = None  # where to connect: the endpoint behind a VIP
    service: Service | None = None


@dataclass(frozen=True)
class Inbound:
    allowed: bool
    reason: str
    status: int  # HTTP status for HBONE: 200, 400, 401 (policy), 503
    dst: Workload | None = None
    decision: Decision | None = None


def plan_outbound(  # noqa: PLR0911 - one return per rule, in order
    snap: Snapshot | None, src_ip: str, dst_ip: str, dst_port: int, choice: int = 0
) -> Outbound:
    if snap is None:
        return Outbound("reject", "no_config")  # fail closed until the first snapshot
    src = snap.local(src_ip)
    if src is None or not src.enrolled:
        return Outbound("reject", "unknown_source")
    if (svc := snap.service(dst_ip)) is not None:
        return _via_service(snap, src, svc, dst_port, choice)
    if dst_ip in snap.ambiguous:
        return Outbound("reject", "ambiguous_destination", src)
    dst = snap.workload(dst_ip)
    target = (dst_ip, dst_port)
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


def plan_inbound(  # noqa: PLR0911 - one return per rule, in order
    snap: Snapshot | None,
    *,
    target_ip: str,
    target_port: int,
    original_dst_ip: str,
    src_ip: str,
    src_principal: str | None,
) -> Inbound:
    """For HBONE `src_principal` is the verified peer; for plaintext (15006) it is None."""
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
    if snap.unconverged and ({dst.namespace, ALL_NAMESPACES} & snap.unconverged):
        return Inbound(False, "policy_not_synced", 503, dst)  # F-11: fail closed, not open
    if src_principal is None:
        mode = mtls_mode(snap.peer_auths, dst.namespace, dst.labels, target_port)
        if mode == "STRICT":
            return Inbound(False, "plaintext_refused_strict_mtls", 401, dst)
    connection = Connection(src_ip, src_principal, target_ip, target_port)
    decision = evaluate(snap.policies, dst.namespace, dst.labels, connection)
    if not decision.allowed:
        return Inbound(False, decision.reason, 401, dst, decision)
    return Inbound(True, decision.reason, 200, dst, decision)
