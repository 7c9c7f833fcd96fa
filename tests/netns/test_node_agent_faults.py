"""RELIABILITY F-13, F-14 and F-15 on a real kernel: the node agent under a datapath fault stays
up with the datapath it has, and says what it could not do; two agents on one node take turns;
an agent of another map version takes over without a gap, both ways."""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bpf.loader import MAP_VERSION, Datapath, compile_datapath
from localcluster import naming, pods, system
from localcluster.cluster import Cluster
from tests.support import (
    agent_readiness,
    ambientctl,
    exec_background,
    get_json,
    namespace_manifest,
    our_filters,
    pod_manifest,
    wait_for,
)


def _pod(cluster: str, name: str) -> dict[str, Any]:
    rows = json.loads(ambientctl(cluster, "status", "-o", "json").stdout)["pods"]
    pod: dict[str, Any] = next(p for p in rows if p["name"] == name)
    return pod


def _agent_pid(cluster: str) -> int | None:
    store = Cluster(cluster).store
    return pods.container_pid(store.system_dir("node-agent-node1"), "node-agent-node1")


def _fill(datapath: Datapath, filler: list[str]) -> OSError:
    """Enrolls made-up addresses until the kernel refuses one (MAX_PODS); returns its error."""
    while True:
        ip = f"10.99.{len(filler) // 250}.{len(filler) % 250 + 1}"
        try:
            datapath.enroll(ip, 1)
        except OSError as exc:
            return exc
        filler.append(ip)


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
        assert _fill(datapath, filler).errno == errno.E2BIG
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


def test_without_bpffs_the_agent_stays_up_unready_says_why_and_starts_once_mounted(
    cluster: str, tmp_path: Path
) -> None:
    """Before: BCC's "Failed to compile BPF module" killed the agent at every start, and
    nothing said that bpffs was missing. An agent whose pin directory is not on bpffs (nor
    under /sys/fs/bpf, which it would mount itself) serves its readiness and metrics, says
    why it is not ready, and starts as soon as the directory is on bpffs."""
    c = Cluster(cluster)
    node_ns = naming.node_netns(cluster, "node1")
    comps = {x.name: x for x in system.components(cluster, c.nodes())}
    system.stop(c.store, comps["node-agent-node1"])  # one agent per node (its tc hooks)
    pins = tmp_path / "pins"
    pins.mkdir()
    argv = ["--cluster", cluster, "--node", "node1", "--pin-dir", str(pins)]
    argv += ["--run-dir", str(tmp_path / "run")]
    agent = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{node_ns}", sys.executable, "-m", "node_agent.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    mounted = False

    try:
        wait_for(lambda: agent_readiness(node_ns)[0] == 503, 15, "the agent answering, unready")
        assert "is not on bpffs" in agent_readiness(node_ns)[1]
        text = ambientctl(cluster, "metrics", "node-agent-node1").stdout
        assert 'ambientmesh_node_agent_reconcile_errors_total{reason="start_failed"}' in text
        assert agent.poll() is None
        subprocess.run(["mount", "-t", "bpf", "bpf", str(pins)], check=True)
        mounted = True
        wait_for(lambda: agent_readiness(node_ns)[0] == 200, 15, "ready once bpffs is there")
        assert any(pins.iterdir())  # its maps, pinned
    finally:
        agent.terminate()
        out, _ = agent.communicate(timeout=10)
        if mounted:
            subprocess.run(["umount", str(pins)], check=True)
    assert agent.returncode == 0, out
    assert out.count("cannot start the datapath") == 1, out  # once per reason, not per retry
    ambientctl(cluster, "up")  # the cluster's own agent back (teardown checks its pins)


def _meshed_pair(cluster: str) -> str:
    """Enrolled pods `app/a` on node1 and `app/s` (a TCP echo server on 9000) on node2, both
    redirected; returns s's IP."""
    docs = [
        namespace_manifest("app"),
        pod_manifest("a", "app", ["sleep", "infinity"], node="node1"),
        pod_manifest(
            "s", "app", ["python3", "-m", "samples.tcpecho", "serve", "9000"], node="node2"
        ),
    ]
    ambientctl(cluster, "apply", "-f", "-", stdin="\n---\n".join(docs))
    ambientctl(cluster, "label", "namespace", "app", "istio.io/dataplane-mode=ambient")
    wait_for(lambda: _pod(cluster, "a")["redirected"] and _pod(cluster, "s")["redirected"], 15)
    return str(
        next(
            p["status"]["podIP"]
            for p in get_json(cluster, "pods", "-n", "app")["items"]
            if p["metadata"]["name"] == "s"
        )
    )


def test_a_second_agent_waits_for_the_first_then_takes_over_without_a_gap(
    cluster: str, tmp_path: Path
) -> None:
    """RELIABILITY F-14, a DaemonSet rolling update: an agent started while another runs on the
    node waits for its lock and touches nothing; the first exits without detaching, and the
    second replaces the programs (not duplicates them) and reports ready. A meshed connection
    open across the handover keeps working."""
    server = _meshed_pair(cluster)
    c = Cluster(cluster)
    node_ns, zt_ns = naming.node_netns(cluster, "node1"), naming.ztunnel_netns(cluster, "node1")
    before = (our_filters(node_ns), our_filters(zt_ns))
    streaming = exec_background(
        cluster, "app/a", "python3", "-m", "samples.tcpecho", "stream", server, "9000", "12", "20"
    )
    log = tmp_path / "second-agent.log"
    argv = ["-m", "node_agent.main", "--cluster", cluster, "--node", "node1"]
    second = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{node_ns}", sys.executable, *argv],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    try:
        wait_for(lambda: "another agent owns node node1" in log.read_text(), 15, "second waits")
        assert second.poll() is None
        assert (our_filters(node_ns), our_filters(zt_ns)) == before, "the waiting agent acted"
        first = _agent_pid(cluster)
        comps = {x.name: x for x in system.components(cluster, c.nodes())}
        system.stop(c.store, comps["node-agent-node1"])
        assert _agent_pid(cluster) is None and first is not None
        assert (our_filters(node_ns), our_filters(zt_ns)) == before, "the first one detached"
        wait_for(lambda: agent_readiness(node_ns)[0] == 200, 20, "the second agent ready")
        assert streaming.poll() is None, "the connection must span the handover"
        assert (our_filters(node_ns), our_filters(zt_ns)) == before, "programs duplicated"
        assert _pod(cluster, "a")["redirected"]
        out, _ = streaming.communicate(timeout=30)
        assert streaming.returncode == 0 and out.startswith("OK"), out
    finally:
        with contextlib.suppress(ProcessLookupError):
            streaming.kill()
        second.terminate()
        second.wait(10)
    assert second.returncode == 0, log.read_text()
    ambientctl(cluster, "up")  # the cluster's own agent back (teardown checks its pins)


# An agent built with another map layout version: the same code, another MAP_VERSION.
OTHER_VERSION_AGENT = (
    "import sys, bpf.loader as loader; loader.MAP_VERSION = 'v0'; "
    "from node_agent.main import main; sys.exit(main(sys.argv[1:]))"
)


def test_an_agent_of_another_map_version_takes_over_both_ways_without_a_gap(
    cluster: str, tmp_path: Path
) -> None:
    """RELIABILITY F-15: a downgrade to an agent whose maps have another layout version, then
    the upgrade back. Each builds its own maps, unpins the other's, replaces the programs
    without stacking them, meshes new connections, and a connection open across both
    handovers keeps working."""
    server = _meshed_pair(cluster)
    c = Cluster(cluster)
    node_ns, zt_ns = naming.node_netns(cluster, "node1"), naming.ztunnel_netns(cluster, "node1")
    pins = naming.bpf_pin_dir(cluster) / "node1"
    before = (our_filters(node_ns), our_filters(zt_ns))

    def stream(seconds: str) -> subprocess.Popen[str]:
        command = ["python3", "-m", "samples.tcpecho", "stream", server, "9000", seconds, "20"]
        return exec_background(cluster, "app/a", *command)

    def meshes_new_connections() -> bool:
        out, _ = stream("0.3").communicate(timeout=30)
        return out.startswith("OK") and _pod(cluster, "a")["redirected"]

    def versions() -> set[str]:
        return {p.name.rsplit("_", 1)[1] for p in pins.iterdir()}

    assert versions() == {MAP_VERSION}
    streaming = stream("30")
    log = tmp_path / "other-version-agent.log"
    comps = {x.name: x for x in system.components(cluster, c.nodes())}
    system.stop(c.store, comps["node-agent-node1"])
    other = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{node_ns}",
            sys.executable,
            "-c",
            OTHER_VERSION_AGENT,
            *("--cluster", cluster, "--node", "node1"),
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: agent_readiness(node_ns)[0] == 200, 20, "the other version's agent ready")
        assert versions() == {"v0"}, "the other version's pins must replace ours"
        assert (our_filters(node_ns), our_filters(zt_ns)) == before, "programs stacked"
        wait_for(meshes_new_connections, 10, "new connections meshed by the other version")
    finally:
        other.terminate()
        other.wait(10)
    assert other.returncode == 0, log.read_text()
    assert "unpinned the maps of another version" in log.read_text()
    ambientctl(cluster, "up")  # back to this version's agent
    wait_for(
        lambda: agent_readiness(node_ns)[0] == 200 and versions() == {MAP_VERSION},
        20,
        "this version's agent back",
    )
    assert (our_filters(node_ns), our_filters(zt_ns)) == before
    wait_for(meshes_new_connections, 10, "new connections meshed again")
    assert streaming.poll() is None, "the connection must span both handovers"
    out, _ = streaming.communicate(timeout=40)
    assert streaming.returncode == 0 and out.startswith("OK"), out
