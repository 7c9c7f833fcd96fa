"""Kubernetes mode: find the node's ztunnel, whatever the CNI.

The ztunnel pod is the one labelled `app=ztunnel` in the mesh's namespace on this node (pure).
Its network namespace has no name on Kubernetes, so it is found through `/proc` (the DaemonSet
runs with hostPID): the namespace whose `eth0` holds the ztunnel pod's IP. Its host-side veth
is then found like any pod's (`attach.pod_veth`: routed or bridged CNIs).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from localcluster.store import ObjectSet

ZTUNNEL_LABEL = ("app", "ztunnel")


def ztunnel_ip(objects: ObjectSet, node: str, namespace: str) -> str | None:
    key, value = ZTUNNEL_LABEL
    for pod in objects.list("Pod", namespace):
        labels = pod["metadata"].get("labels") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if labels.get(key) == value and pod["spec"].get("nodeName") == node and ip:
            return str(ip)
    return None


def netns_holding(ip: str, proc: Path = Path("/proc")) -> str | None:
    """A `/proc/<pid>/ns/net` path of the network namespace whose eth0 has `ip`."""
    return netns_holding_all({ip}, proc).get(ip)


def netns_holding_all(ips: set[str], proc: Path = Path("/proc")) -> dict[str, str]:
    """For each of `ips` found, a `/proc/<pid>/ns/net` path of the network namespace whose
    eth0 holds it: one pass over /proc, each namespace opened once, however many pods."""
    found: dict[str, str] = {}
    seen: set[int] = set()
    for entry in proc.iterdir():
        if len(found) == len(ips):
            break
        if not entry.name.isdigit():
            continue
        path = entry / "ns" / "net"
        try:
            inode = path.stat().st_ino
        except OSError:
            continue  # the process exited, or is not ours to see
        if inode in seen:
            continue
        seen.add(inode)
        with contextlib.suppress(NetlinkError, OSError), IPRoute(netns=str(path), flags=0) as ipr:
            for msg in ipr.get_addr(label="eth0"):
                address = msg.get_attr("IFA_ADDRESS")
                if address in ips:
                    found.setdefault(address, str(path))
    return found
