"""The node agent finds a pod's host veth whatever the CNI: routed (a /32 route to the veth) or
bridged (the route points at a bridge; neighbour + FDB give the port)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import netns

from localcluster import teardown
from node_agent.attach import pod_veth


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def names(cluster_name: str) -> Iterator[tuple[str, str]]:
    node, pod = f"am-{cluster_name}-node1", f"am-{cluster_name}-x.pod"
    ip("netns", "add", node)
    ip("netns", "add", pod)
    try:
        yield node, pod
    finally:
        teardown.down(cluster_name)


def ifindex(node: str, name: str) -> int:
    out = subprocess.run(
        ["ip", "-n", node, "-o", "link", "show", name], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split(":")[0])


def found(node: str, pod_ip: str) -> int | None:
    netns.pushns(node)
    try:
        return pod_veth(pod_ip)
    finally:
        netns.popns()


def test_routed_cni(names: tuple[str, str]) -> None:
    node, pod = names
    ip("-n", node, "link", "add", "vethr", "type", "veth", "peer", "name", "eth0", "netns", pod)
    ip("-n", node, "link", "set", "vethr", "up")
    ip("-n", node, "route", "add", "10.90.0.5/32", "dev", "vethr", "scope", "link")
    assert found(node, "10.90.0.5") == ifindex(node, "vethr")


def test_bridged_cni(names: tuple[str, str]) -> None:
    node, pod = names
    ip("-n", node, "link", "add", "cni0", "type", "bridge")
    ip("-n", node, "link", "set", "cni0", "up")
    ip("-n", node, "addr", "add", "10.88.0.1/16", "dev", "cni0")
    ip("-n", node, "link", "add", "vethb", "type", "veth", "peer", "name", "eth0", "netns", pod)
    ip("-n", node, "link", "set", "vethb", "master", "cni0", "up")
    ip("-n", pod, "addr", "add", "10.88.0.5/16", "dev", "eth0")
    ip("-n", pod, "link", "set", "eth0", "up")
    assert found(node, "10.88.0.5") == ifindex(node, "vethb")  # ARP prompted: no entry before


def test_unknown_pod(names: tuple[str, str]) -> None:
    node, _ = names
    assert found(node, "10.77.0.1") is None
