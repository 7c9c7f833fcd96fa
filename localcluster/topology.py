"""The address plan of a local cluster: pure functions from (node count) to addresses.

Chosen to look like a kind cluster, so addresses in docs and tests read familiarly:
nodes on 172.18.0.0/16 (kind's docker network), pods on 10.244.<node>.0/24 (kind's pod CIDR).
Each node's pod veths share the gateway address .1 (as the CNI ptp plugin does); .2 is the node's
ztunnel; pods get the lowest free address from .3 (reuse is immediate, unlike host-local IPAM —
deliberately, so the mesh is always exercised against IP reuse).
Addresses never leak: every address lives inside the cluster's own namespaces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

UNDERLAY = ipaddress.ip_network("172.18.0.0/16")
POD_SUPERNET = ipaddress.ip_network("10.244.0.0/16")
MAX_NODES = 250
FIRST_POD_HOST = 3  # .1 gateway, .2 ztunnel


@dataclass(frozen=True)
class NodePlan:
    """Addresses of one node."""

    name: str
    index: int  # 1-based
    node_ip: str  # on the underlay
    pod_cidr: str
    gateway_ip: str  # on every host-side pod veth of this node
    ztunnel_ip: str

    def pod_ips(self) -> list[str]:
        net = ipaddress.ip_network(self.pod_cidr)
        return [str(net[i]) for i in range(FIRST_POD_HOST, net.num_addresses - 1)]


def node_name(index: int) -> str:
    return f"node{index}"


def plan_node(index: int) -> NodePlan:
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index must be 1-{MAX_NODES}")
    pod_net = ipaddress.ip_network(f"10.244.{index}.0/24")
    return NodePlan(
        name=node_name(index),
        index=index,
        node_ip=str(UNDERLAY[index + 1]),
        pod_cidr=str(pod_net),
        gateway_ip=str(pod_net[1]),
        ztunnel_ip=str(pod_net[2]),
    )


def plan_nodes(count: int) -> list[NodePlan]:
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"--nodes must be between 1 and {MAX_NODES}, got {count}")
    return [plan_node(i) for i in range(1, count + 1)]


def allocate_pod_ip(node: NodePlan, in_use: Collection[str]) -> str:
    """Lowest free pod address of the node; raises when the /24 is exhausted."""
    for ip in node.pod_ips():
        if ip not in in_use:
            return ip
    raise ValueError(f"node {node.name}: no free pod address left in {node.pod_cidr}")


def pick_node(nodes: list[NodePlan], pods_per_node: dict[str, int]) -> NodePlan:
    """Spread like the default scheduler: fewest pods first, then node order (round-robin)."""
    return min(nodes, key=lambda n: (pods_per_node.get(n.name, 0), n.index))
