"""Node-agent behaviour for Kubernetes, on a real kernel: finding ztunnel's netns by its IP
through /proc (no netns name on Kubernetes), the uninstall cleanup mode, and the rebuild after a
reboot wiped programs and pins."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import IPRoute

from api import ports
from localcluster import naming, system
from localcluster.cluster import Cluster
from localcluster.netns import http_get_in, set_sysctls
from node_agent import discover
from node_agent.attach import ZTUNNEL_SYSCTLS
from node_agent.main import API_GRACE_S
from tests.fakekube import TOKEN
from tests.support import (
    agent_readiness,
    ambientctl,
    namespace_manifest,
    our_filters,
    pod_manifest,
    wait_for,
)


def eth0_addresses(netns_path: str) -> set[str]:
    with IPRoute(netns=netns_path, flags=0) as ipr:
        return {str(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(label="eth0")}


def test_ztunnel_netns_is_found_by_its_ip(cluster: str) -> None:
    plan = Cluster(cluster).nodes()[0]
    path = discover.netns_holding(plan.ztunnel_ip)
    assert path is not None
    named = Path("/run/netns") / naming.ztunnel_netns(cluster, plan.name)
    if Path(path).stat().st_ino != named.stat().st_ino:
        # Another local cluster on this host (`make demo` leaves one up) has the same address
        # plan: a Kubernetes node has one ztunnel, here the first found must hold the address.
        assert plan.ztunnel_ip in eth0_addresses(path)
    assert plan.ztunnel_ip in eth0_addresses(str(named))
    assert discover.netns_holding("10.244.250.250") is None


def test_cleanup_detaches_everything_and_removes_pins(cluster: str) -> None:
    docs = [
        namespace_manifest("app"),
        pod_manifest("a", "app", ["sleep", "infinity"], node="node1"),
    ]
    ambientctl(cluster, "apply", "-f", "-", stdin="\n---\n".join(docs))
    ambientctl(cluster, "label", "namespace", "app", "istio.io/dataplane-mode=ambient")
    c = Cluster(cluster)
    node_ns = naming.node_netns(cluster, "node1")
    zt_ns = naming.ztunnel_netns(cluster, "node1")

    def captured() -> bool:
        status = json.loads(ambientctl(cluster, "status", "-o", "json").stdout)
        return all(p["redirected"] for p in status["pods"])

    wait_for(captured, 10, "pod captured")
    assert system.agent_status(c.store, "node1")["ready"]
    pin_dir = naming.bpf_pin_dir(cluster) / "node1"
    assert pin_dir.exists()
    before = (our_filters(node_ns), our_filters(zt_ns))
    assert before[0] >= 2 and before[1] >= 1, before  # pod_out + pod_in, zt_in

    comps = {x.name: x for x in system.components(cluster, c.nodes())}
    system.stop(c.store, comps["node-agent-node1"])  # as uninstall replaces the DaemonSet pods
    cleaner = subprocess.Popen(
        [
            "nsenter",  # not `ip netns exec`: it mounts a fresh /sys, without bpffs
            f"--net=/run/netns/{node_ns}",
            sys.executable,
            "-m",
            "node_agent.main",
            "--cluster",
            cluster,
            "--node",
            "node1",
            "--cleanup",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: not pin_dir.exists() or cleaner.poll() is not None, 15, "pins removed")
        assert cleaner.poll() is None, "cleanup mode must stay up (a DaemonSet container)"
        time.sleep(0.2)
        assert (our_filters(node_ns), our_filters(zt_ns)) == (0, 0)
    finally:
        cleaner.terminate()
        out, _ = cleaner.communicate(timeout=10)
    assert cleaner.returncode == 0, out
    assert "cleanup:" in out
    # Like a node after a reboot (programs and pins gone): a new agent rebuilds everything and
    # says ready only then.
    ambientctl(cluster, "up")

    wait_for(lambda: agent_readiness(node_ns)[0] == 200, 15, "new agent ready")
    assert pin_dir.exists()
    assert captured()
    assert our_filters(node_ns) >= 2


def test_the_agent_sets_ztunnels_sysctls(cluster: str) -> None:
    """On Kubernetes the ztunnel container cannot write its /proc/sys: the agent sets TIME_WAIT
    reuse over a full port range (inbound dials from one client IP otherwise fell from
    ~1 050 to ~350 connections/s) and the SO_REUSEPORT handover, whatever was there before."""
    zt_ns = naming.ztunnel_netns(cluster, "node1")
    values = {"net/ipv4/tcp_tw_reuse": "2", "net/ipv4/ip_local_port_range": "32768 60999"}
    set_sysctls(zt_ns, values)
    ambientctl(cluster, "restart", "node-agent-node1")

    def tuned() -> bool:
        # The kernel shows reserved ports as ranges (15000-15001,15006,...).
        reserved = "net/ipv4/ip_local_reserved_ports"
        plain = {k: v for k, v in ZTUNNEL_SYSCTLS.items() if k != reserved}
        return "15008" in read_sysctl(zt_ns, reserved) and all(
            read_sysctl(zt_ns, key) == want for key, want in plain.items()
        )

    wait_for(tuned, 15, "ztunnel's sysctls set by the agent")


def read_sysctl(netns_name: str, key: str) -> str:
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns_name}", "cat", f"/proc/sys/{key}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return " ".join(done.stdout.split())


def test_with_the_api_unreachable_the_agent_keeps_its_datapath_and_says_so(
    cluster: str, tmp_path: Path
) -> None:
    """RELIABILITY F-13 with `--source kubernetes`, against a fake API server in the node's
    netns: once the API has answered nothing for API_GRACE_S, readiness is 503 and names the
    API, the datapath stays attached, and the source's errors are on the agent's /metrics;
    when the API answers again, the agent is ready again."""
    c = Cluster(cluster)
    node_ns, zt_ns = naming.node_netns(cluster, "node1"), naming.ztunnel_netns(cluster, "node1")
    comps = {x.name: x for x in system.components(cluster, c.nodes())}
    system.stop(c.store, comps["node-agent-node1"])  # one agent per node (its tc hooks)
    flag, port = tmp_path / "unreachable", 18443
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "f", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "agent", "user": {"token": TOKEN}}],
                "contexts": [{"name": "c", "context": {"cluster": "f", "user": "agent"}}],
                "current-context": "c",
            }
        )
    )
    enter = ["nsenter", f"--net=/run/netns/{node_ns}", sys.executable, "-m"]
    api = subprocess.Popen([*enter, "tests.fakekube", str(port), str(flag)])
    log = tmp_path / "agent.log"
    argv = ["--cluster", cluster, "--node", "node1", "--source", "kubernetes"]
    agent = subprocess.Popen(
        [*enter, "node_agent.main", *argv, "--kubeconfig", str(kubeconfig)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    try:
        wait_for(lambda: agent_readiness(node_ns)[0] == 200, 30, "ready on the fake API's state")
        before = (our_filters(node_ns), our_filters(zt_ns))
        flag.touch()
        wait_for(
            lambda: agent_readiness(node_ns)[0] == 503, API_GRACE_S + 20, "unready, the API gone"
        )
        body = agent_readiness(node_ns)[1]
        assert "Kubernetes API unreachable" in body and "HTTP 503" in body, body
        assert (our_filters(node_ns), our_filters(zt_ns)) == before, "the datapath changed"
        text = http_get_in(node_ns, "127.0.0.1", ports.NODE_AGENT_METRICS, "/metrics")[1]
        assert b'ambientmesh_source_errors_total{kind="Pod"}' in text
        assert agent.poll() is None
        flag.unlink()
        # The informers back off up to 30 s (sources.kube.BACKOFF_S) between attempts.
        wait_for(lambda: agent_readiness(node_ns)[0] == 200, 45, "ready again once the API answers")
    finally:
        agent.terminate()
        api.terminate()
        agent.wait(10)
        api.wait(10)
    assert agent.returncode == 0, log.read_text()
    ambientctl(cluster, "up")  # the cluster's own agent back (teardown checks its pins)
