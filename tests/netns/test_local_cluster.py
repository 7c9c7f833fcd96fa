"""The local cluster through the real CLI: a cluster users can trust, in real namespaces."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from localcluster import naming
from localcluster import netns as kernel
from tests.support import (
    ambientctl,
    cluster_netns,
    get_json,
    http_probe,
    leftovers,
    namespace_manifest,
    pod_manifest,
    wait_for,
)

SERVE = ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8080"]


def test_every_pod_reaches_every_pod_on_three_nodes_and_down_removes_all(
    state_dir: object, cluster_name: str
) -> None:
    started = time.monotonic()
    ambientctl(cluster_name, "up", "--nodes", "3")
    print(f"up --nodes 3: {time.monotonic() - started:.2f}s")
    try:
        docs = [namespace_manifest("mesh")]
        docs += [pod_manifest(f"p{i}", "mesh", SERVE) for i in range(6)]
        ambientctl(cluster_name, "apply", "-f", "-", stdin="\n---\n".join(docs))
        pods = get_json(cluster_name, "pods", "-n", "mesh")["items"]
        assert sorted(p["spec"]["nodeName"] for p in pods) == [
            "node1",
            "node1",
            "node2",
            "node2",
            "node3",
            "node3",
        ]
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        for src in ips:
            urls = [f"http://{ip}:8080/" for name, ip in ips.items() if name != src]

            def all_ok(src: str = src, urls: list[str] = urls) -> bool:
                return set(http_probe(cluster_name, f"mesh/{src}", urls).values()) == {"200"}

            wait_for(all_ok, 15, f"{src} to reach every other pod")
        status = json.loads(ambientctl(cluster_name, "status", "-o", "json").stdout)
        names = [n["netns"] for n in status["nodes"]] + [n["ztunnelNetns"] for n in status["nodes"]]
        names += [p["netns"] for p in status["pods"]] + [status["underlayNetns"]]
        assert sorted(names) == sorted(cluster_netns(cluster_name))
        assert all(kernel.exists(n) for n in names)
    finally:
        out = ambientctl(cluster_name, "down").stdout
    assert "removed" in out
    assert leftovers(cluster_name) == []


def test_two_clusters_coexist_and_down_touches_only_one(
    make_cluster: Callable[[str, int], str], cluster_name: str
) -> None:
    a = make_cluster(cluster_name, 2)
    b = make_cluster(cluster_name[:-1] + ("x" if cluster_name[-1] != "x" else "y"), 2)
    for c in (a, b):
        ambientctl(
            c,
            "apply",
            "-f",
            "-",
            stdin=pod_manifest("srv", "default", SERVE, node="node2")
            + "\n---\n"
            + pod_manifest("cli", "default", ["sleep", "infinity"], node="node1"),
        )
    url = "http://10.244.2.3:8080/"  # the same address in both clusters
    for c in (a, b):

        def serving(c: str = c) -> bool:
            return http_probe(c, "cli", [url])[url] == "200"

        wait_for(serving, 15, f"{c} serving")
    ambientctl(a, "down")
    assert leftovers(a) == []
    assert http_probe(b, "cli", [url])[url] == "200"


def test_exec_passes_exit_code_stdout_and_stdin(cluster: str) -> None:
    ambientctl(cluster, "apply", "-f", "-", stdin=pod_manifest("box", "default", ["sleep", "inf"]))
    done = ambientctl(
        cluster, "exec", "default/box", "--", "sh", "-c", "cat; exit 7", stdin="hello", check=False
    )
    assert (done.returncode, done.stdout) == (7, "hello")
    devices = ambientctl(cluster, "exec", "box", "--", "cat", "/proc/net/dev").stdout
    assert sorted(line.split(":")[0].strip() for line in devices.splitlines()[2:]) == [
        "eth0",
        "lo",
    ], "exec must run in the pod's own netns"


def test_crashing_container_restarts_and_logs_keep_every_run(cluster: str) -> None:
    crash = ["sh", "-c", "echo started; sleep 0.2; exit 1"]
    ambientctl(cluster, "apply", "-f", "-", stdin=pod_manifest("crash", "default", crash))

    def restarted() -> bool:
        pod = get_json(cluster, "pods", "crash")
        return bool(pod["status"]["containerStatuses"][0]["restartCount"] >= 2)

    wait_for(restarted, 15, "two restarts")
    assert ambientctl(cluster, "logs", "default/crash").stdout.count("started") >= 2


def test_delete_pod_and_namespace_remove_netns_and_processes(cluster: str) -> None:
    docs = [
        namespace_manifest("shop"),
        pod_manifest("a", "shop", SERVE),
        pod_manifest("b", "shop", ["sleep", "infinity"]),
    ]
    ambientctl(cluster, "apply", "-f", "-", stdin="\n---\n".join(docs))
    pod_ns = naming.pod_netns(cluster, "shop", "a")
    assert kernel.pids_in([pod_ns])
    ambientctl(cluster, "delete", "pod", "a", "-n", "shop")
    assert not kernel.exists(pod_ns)
    out = ambientctl(cluster, "delete", "namespace", "shop").stdout
    assert "pod/b deleted" in out
    assert not kernel.exists(naming.pod_netns(cluster, "shop", "b"))
    assert get_json(cluster, "pods", "-A")["items"] == []


def test_up_repairs_a_pod_whose_netns_and_shim_were_removed(cluster: str) -> None:
    ambientctl(
        cluster,
        "apply",
        "-f",
        "-",
        stdin=pod_manifest("srv", "default", SERVE, node="node2")
        + "\n---\n"
        + pod_manifest("cli", "default", ["sleep", "infinity"], node="node1"),
    )
    pod_ns = naming.pod_netns(cluster, "default", "srv")
    kernel.kill_processes_in([pod_ns], grace_s=1)
    kernel.remove(pod_ns)
    assert get_json(cluster, "pods", "srv")["status"]["phase"] == "Pending"
    ambientctl(cluster, "up")
    url = "http://10.244.2.3:8080/"
    wait_for(lambda: http_probe(cluster, "cli", [url])[url] == "200", 15, "repaired pod serving")


def test_label_enrolls_and_opts_out(cluster: str) -> None:
    docs = [
        namespace_manifest("app"),
        pod_manifest("a", "app", ["sleep", "infinity"]),
        pod_manifest("b", "app", ["sleep", "infinity"]),
    ]
    ambientctl(cluster, "apply", "-f", "-", stdin="\n---\n".join(docs))

    def enrolled() -> dict[str, bool]:
        status = json.loads(ambientctl(cluster, "status", "-o", "json").stdout)
        return {p["name"]: p["enrolled"] for p in status["pods"]}

    assert enrolled() == {"a": False, "b": False}
    ambientctl(cluster, "label", "namespace", "app", "istio.io/dataplane-mode=ambient")
    ambientctl(cluster, "label", "pod", "b", "-n", "app", "istio.io/dataplane-mode=none")
    assert enrolled() == {"a": True, "b": False}
    ambientctl(cluster, "label", "pod", "b", "-n", "app", "istio.io/dataplane-mode-")
    assert enrolled() == {"a": True, "b": True}
    refused = ambientctl(
        cluster, "label", "namespace", "app", "istio.io/dataplane-mode=none", check=False
    )
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
