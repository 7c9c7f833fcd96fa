"""RELIABILITY F-13 on a real kernel: the node agent under a datapath fault stays up with the
datapath it has, and says what it could not do."""

from __future__ import annotations

import contextlib
import errno
import json
from typing import Any

from bpf.loader import compile_datapath
from localcluster import naming, pods
from localcluster.cluster import Cluster
from tests.support import ambientctl, namespace_manifest, pod_manifest, wait_for


def _pod(cluster: str, name: str) -> dict[str, Any]:
    rows = json.loads(ambientctl(cluster, "status", "-o", "json").stdout)["pods"]
    pod: dict[str, Any] = next(p for p in rows if p["name"] == name)
    return pod


def _agent_pid(cluster: str) -> int | None:
    store = Cluster(cluster).store
    return pods.container_pid(store.system_dir("node-agent-node1"), "node-agent-node1")


def test_a_full_pod_map_is_counted_shown_and_retried_not_a_crash(cluster: str) -> None:
    """Regression: BCC reports a failed map update as a bare Exception, which nothing caught:
    with node1's `enrolled` map full, enrolling one more pod killed the agent at every start."""
    docs = [
        namespace_manifest("app"),
        pod_manifest("a", "app", ["sleep", "infinity"], node="node1"),
    ]
    ambientctl(cluster, "apply", "-f", "-", stdin="\n---\n".join(docs))
    agent = _agent_pid(cluster)
    assert agent is not None
    # The agent's own pinned maps: a second loader reuses the pins (bpf/loader.py).
    datapath = compile_datapath(naming.bpf_pin_dir(cluster) / "node1")
    filler: list[str] = []
    try:
        while True:  # MAX_PODS entries: the kernel refuses the next with E2BIG
            ip = f"10.99.{len(filler) // 250}.{len(filler) % 250 + 1}"
            try:
                datapath.enroll(ip, 1)
            except OSError as exc:
                assert exc.errno == errno.E2BIG, exc
                break
            filler.append(ip)
        ambientctl(cluster, "label", "namespace", "app", "istio.io/dataplane-mode=ambient")
        wait_for(lambda: _pod(cluster, "a")["pending"] == "map_full", 10, "map_full shown")
        shown = ambientctl(cluster, "status").stdout
        assert "no (map_full)" in shown
        text = ambientctl(cluster, "metrics", "node-agent-node1").stdout
        assert 'ambientmesh_node_agent_reconcile_errors_total{reason="map_full"}' in text
        assert "ambientmesh_node_agent_pending_pods 1.0" in text
        assert _agent_pid(cluster) == agent  # up, serving the pods it has
        assert not _pod(cluster, "a")["redirected"]
        for ip in filler[:8]:
            datapath.unenroll(ip)
        wait_for(lambda: _pod(cluster, "a")["redirected"], 10, "enrolled once there is room")
        assert _pod(cluster, "a")["pending"] == ""
        assert _agent_pid(cluster) == agent
    finally:
        for ip in filler:
            with contextlib.suppress(KeyError):
                datapath.unenroll(ip)
