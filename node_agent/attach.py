"""Attaching the datapath with pyroute2 (BCC cannot attach tc programs).

Every program is attached to a `clsact` qdisc with `replace-filter` at a fixed priority and handle:
a restarted agent *replaces* the program in place (a live connection never sees a gap) instead of
stacking a second filter. Nothing here ever detaches on exit; `detach` exists for un-enrolling and
the uninstall cleanup mode. Our priority is fixed and documented so a cluster's own CNI programs
on the same hooks can be ordered around it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from api import ports

INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
# tc priority 0x2a0a and handle 0xa0: ours, the same on every hook (documented in ARCHITECTURE).
PRIO = 0x2A0A
HANDLE = 0xA0
# Marks assigned packets in ztunnel's netns; routed by table LOCAL_TABLE as local.
MARK = 0x5A0
LOCAL_TABLE = 0x5A0
RULE_PRIORITY = 100
DISCARD_PORT = 9  # RFC 863: a datagram here only makes the node resolve the pod's MAC
ARP_WAIT_S = 1.0
RT_SCOPE_HOST = 254
# ztunnel's netns, set up with its datapath (the agent has that netns; the ztunnel container's
# /proc/sys is read-only on Kubernetes):
ZTUNNEL_SYSCTLS = {
    # A restarting ztunnel's pending connections move to the listener that stays (F-4).
    "net/ipv4/tcp_migrate_req": "1",
    # Inbound dials come from the client's IP, so at ~1 000 new connections/s to one pod the
    # client-IP/pod pairs ran through the 28 000-port default range within TIME_WAIT's 60 s
    # (the rate fell from ~1 050/s to ~350/s): reuse TIME_WAIT ports (safe with timestamps, as
    # for any proxy) from a full range, ztunnel's own ports excepted.
    "net/ipv4/tcp_tw_reuse": "1",
    "net/ipv4/ip_local_port_range": "1024 65535",
    "net/ipv4/ip_local_reserved_ports": ports.POD_RESERVED_PORTS,
}


@dataclass(frozen=True)
class Hook:
    netns: str | None  # None: the agent's own netns (the node)
    ifindex: int
    direction: str  # INGRESS or EGRESS
    name: str  # program name, shown by `tc filter show`


@contextlib.contextmanager
def _ipr(netns: str | None) -> Iterator[IPRoute]:
    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    with ipr:
        yield ipr


def attach(hook: Hook, fd: int) -> None:
    """Attach (or atomically replace) our program on the hook. Raises OSError (pyroute2's
    NetlinkError is not one), e.g. ENODEV when the veth is gone."""
    try:
        _attach(hook, fd)
    except NetlinkError as exc:
        raise OSError(exc.code, f"tc {hook.name} on ifindex {hook.ifindex}: {exc}") from exc


def _attach(hook: Hook, fd: int) -> None:
    with _ipr(hook.netns) as ipr:
        try:
            ipr.tc("add", "clsact", hook.ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        ipr.tc(
            "replace-filter",
            "bpf",
            hook.ifindex,
            HANDLE,
            fd=fd,
            name=hook.name,
            parent=hook.direction,
            prio=PRIO,
            direct_action=True,
            classid=1,
        )


def attached_name(hook: Hook) -> str | None:
    """The name of our program on the hook, or None (drift detection)."""
    with _ipr(hook.netns) as ipr:
        try:
            filters = ipr.get_filters(hook.ifindex, parent=hook.direction)
        except NetlinkError:
            return None
    for f in filters:
        if (int(f["info"]) >> 16) == PRIO:  # tcmsg.info = prio << 16 | protocol
            options = f.get_attr("TCA_OPTIONS")
            if options is not None and (name := options.get_attr("TCA_BPF_NAME")):
                return str(name)
    return None


def detach(hook: Hook) -> None:
    with _ipr(hook.netns) as ipr, contextlib.suppress(NetlinkError):
        ipr.tc("del-filter", "bpf", hook.ifindex, HANDLE, parent=hook.direction, prio=PRIO)


def ifindex_of(netns: str | None, ifname: str) -> int | None:
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def mac_of(netns: str | None, ifname: str) -> str:
    with _ipr(netns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
    return str(link.get_attr("IFLA_ADDRESS"))


def route_oif(ip: str) -> int | None:
    """The interface the node routes `ip` out of: a pod's host veth with a routed CNI."""
    with _ipr(None) as ipr:
        try:
            routes = ipr.route("get", dst=ip)
        except NetlinkError:
            return None
    for route in routes:
        oif = route.get_attr("RTA_OIF")
        if oif:
            return int(oif)
    return None


def _neighbour_mac(ipr: IPRoute, ip: str) -> str | None:
    for entry in ipr.get_neighbours(dst=ip):
        if mac := entry.get_attr("NDA_LLADDR"):
            return str(mac)
    return None


def _resolve_mac(ipr: IPRoute, ip: str) -> str | None:
    """The pod's MAC as the node knows it; prompts ARP (a datagram to the discard port) if the
    neighbour table has no entry yet."""
    if (mac := _neighbour_mac(ipr, ip)) is not None:
        return mac
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as prod:
        prod.sendto(b"", (ip, DISCARD_PORT))
    deadline = time.monotonic() + ARP_WAIT_S
    while time.monotonic() < deadline:
        if (mac := _neighbour_mac(ipr, ip)) is not None:
            return mac
        time.sleep(0.02)
    return None


def pod_veth(ip: str) -> int | None:
    """The host-side veth of a pod. Routed CNIs (Calico, ptp, the local cluster): the interface
    the node routes the pod's IP out of. Bridged CNIs (bridge plugin, flannel's cni0): that
    interface is the bridge; the veth is the bridge port that learned the pod's MAC
    (neighbour lookup, then the bridge FDB)."""
    oif = route_oif(ip)
    if oif is None:
        return None
    with _ipr(None) as ipr:
        info = ipr.get_links(oif)[0].get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
            return oif
        mac = _resolve_mac(ipr, ip)
        if mac is None:
            return None
        for entry in ipr.fdb("dump"):
            if entry.get_attr("NDA_LLADDR") == mac and entry.get_attr("NDA_MASTER") == oif:
                return int(entry["ifindex"])
    return None


def ensure_local_routing(netns: str) -> None:
    """In ztunnel's netns: packets carrying MARK are delivered locally (the sk_assign'ed ones
    are addressed to pods, not to ztunnel)."""
    with _ipr(netns) as ipr:
        try:
            ipr.rule("add", fwmark=MARK, table=LOCAL_TABLE, priority=RULE_PRIORITY)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.route(
            "replace", dst="0.0.0.0/0", type="local", scope=RT_SCOPE_HOST, table=LOCAL_TABLE, oif=lo
        )


def detach_all(netns: str | None) -> int:
    """Remove our filters (by prio and handle) from every interface of a netns; how many."""
    removed = 0
    with _ipr(netns) as ipr:
        for link in ipr.get_links():
            for parent in (INGRESS, EGRESS):
                try:
                    filters = ipr.get_filters(link["index"], parent=parent)
                except NetlinkError:
                    continue
                if any((int(f["info"]) >> 16) == PRIO for f in filters):
                    with contextlib.suppress(NetlinkError):
                        ipr.tc("del-filter", "bpf", link["index"], HANDLE, parent=parent, prio=PRIO)
                        removed += 1
    return removed


def remove_local_routing(netns: str) -> None:
    """Undo `ensure_local_routing`."""
    with _ipr(netns) as ipr:
        with contextlib.suppress(NetlinkError):
            ipr.rule("del", fwmark=MARK, table=LOCAL_TABLE, priority=RULE_PRIORITY)
        with contextlib.suppress(NetlinkError):
            ipr.flush_routes(table=LOCAL_TABLE)
