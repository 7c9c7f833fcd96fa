"""Kernel plumbing of the local cluster: namespaces, veths, bridge, routes, and their processes.

All netlink goes through pyroute2 (`IPRoute(netns=..., flags=0)`: flags=0 so a missing netns is an
error, not silently created). Nothing here touches the root network namespace.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pyroute2 import IPRoute, netns

from localcluster.naming import NETNS_DIR
from localcluster.topology import UNDERLAY, NodePlan

BRIDGE = "br0"
RT_SCOPE_LINK = 253
# A host-side pod veth answers for the gateway, and forwards between pods, nodes and ztunnel.
NODE_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    # The eBPF datapath (a later stage) redirects packets between veths; strict reverse-path
    # filtering would drop them, as it does for Cilium and Calico's eBPF modes.
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}


class NetnsError(RuntimeError):
    """A kernel operation on the cluster's namespaces failed."""


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_all() -> list[str]:
    return sorted(netns.listnetns())


def create(name: str) -> None:
    if not exists(name):
        netns.create(name)


def remove(name: str) -> None:
    try:
        netns.remove(name)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise


@contextlib.contextmanager
def route(name: str) -> Iterator[IPRoute]:
    try:
        ipr = IPRoute(netns=name, flags=0)
    except OSError as exc:
        raise NetnsError(f"netns {name}: {exc.strerror or exc}") from None
    with ipr:
        yield ipr


def set_sysctls(name: str, values: dict[str, str]) -> None:
    """Write /proc/sys entries as seen from inside netns `name` (net sysctls are per netns)."""
    netns.pushns(name)
    try:
        for key, value in values.items():
            Path("/proc/sys", key).write_text(value)
    finally:
        netns.popns()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"interface {ifname} not found")
    return int(found[0])


def has_link(name: str, ifname: str) -> bool:
    if not exists(name):
        return False
    with route(name) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def _up(ipr: IPRoute, ifname: str) -> int:
    idx = _index(ipr, ifname)
    ipr.link("set", index=idx, state="up")
    return idx


def build_underlay(name: str) -> None:
    """The wire between nodes: one bridge in its own netns (capture it with tcpdump on br0)."""
    create(name)
    with route(name) as ipr:
        _up(ipr, "lo")
        if not ipr.link_lookup(ifname=BRIDGE):
            ipr.link("add", ifname=BRIDGE, kind="bridge")
        _up(ipr, BRIDGE)


def build_node(underlay: str, name: str, plan: NodePlan, peers: Iterable[NodePlan]) -> None:
    """A node: its netns, its leg on the underlay bridge, routes to every other node's pods."""
    create(name)
    set_sysctls(name, NODE_SYSCTLS)
    leg = f"n{plan.index}"
    with route(underlay) as ipr:
        if ipr.link_lookup(ifname=leg):
            ipr.link("del", index=_index(ipr, leg))
        ipr.link("add", ifname=leg, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
        ipr.link("set", index=_index(ipr, leg), master=_index(ipr, BRIDGE), state="up")
    with route(name) as ipr:
        _up(ipr, "lo")
        idx = _up(ipr, "eth0")
        ipr.addr("add", index=idx, address=plan.node_ip, prefixlen=UNDERLAY.prefixlen)
        for peer in peers:
            if peer.name != plan.name:
                ipr.route("add", dst=peer.pod_cidr, gateway=peer.node_ip)


def wire_pod(node_ns: str, pod_ns: str, *, host_if: str, pod_ip: str, gateway_ip: str) -> None:
    """Connect a pod netns to its node like a routed (ptp) CNI: /32 address, default via gateway.

    The host side carries the node's gateway address and a /32 route to the pod, so the node
    finds a pod's veth by a route lookup, as it would with Calico or the ptp plugin.
    """
    create(pod_ns)
    with route(node_ns) as ipr:
        if ipr.link_lookup(ifname=host_if):
            ipr.link("del", index=_index(ipr, host_if))
        ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod_ns})
        idx = _up(ipr, host_if)
        ipr.addr("add", index=idx, address=gateway_ip, prefixlen=32)
        ipr.route("add", dst=f"{pod_ip}/32", oif=idx, scope=RT_SCOPE_LINK)
    with route(pod_ns) as ipr:
        _up(ipr, "lo")
        idx = _up(ipr, "eth0")
        ipr.addr("add", index=idx, address=pod_ip, prefixlen=32)
        ipr.route("add", dst=f"{gateway_ip}/32", oif=idx, scope=RT_SCOPE_LINK)
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway_ip, oif=idx)


def _inode(path: str) -> int | None:
    try:
        return Path(path).stat().st_ino
    except OSError:
        return None


def pids_in(names: Iterable[str]) -> list[int]:
    """PIDs of every process whose network namespace is one of `names`."""
    wanted = {ino for name in names if (ino := _inode(str(NETNS_DIR / name))) is not None}
    if not wanted:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _inode(f"/proc/{entry.name}/ns/net") in wanted:
            pids.append(int(entry.name))
    return [pid for pid in pids if pid != os.getpid()]


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_processes_in(names: list[str], grace_s: float) -> int:
    """SIGTERM everything inside `names`, SIGKILL what is left after `grace_s`; return count."""
    pids = pids_in(names)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := pids_in(names)) and time.monotonic() < deadline:
        time.sleep(0.05)
    while left:
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.05)
        left = pids_in(names)
    return len(pids)


def connect_in(name: str, host: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection made from inside netns `name` (the socket stays in that netns)."""
    netns.pushns(name)
    try:
        return socket.create_connection((host, port), timeout=timeout_s)
    finally:
        netns.popns()


def http_get_in(
    name: str, host: str, port: int, path: str, timeout_s: float = 3.0
) -> tuple[int, bytes]:
    """GET from inside a netns (admin and readiness endpoints listen only there)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    conn.sock = connect_in(name, host, port, timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
