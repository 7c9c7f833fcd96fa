"""Services for pods outside the mesh (issue 26): the local cluster's kube-proxy (nftables in
each node netns) takes an unenrolled pod's connection to a ClusterIP to a ready endpoint, with
session affinity, and the destination's PeerAuthentication then treats it as Istio documents
for a plaintext client — PERMISSIVE lets it in, STRICT refuses it. A dry-run policy at that
destination is counted, never enforced."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api import ports
from localcluster import naming
from localcluster.netns import http_get_in
from localcluster.servicerules import TABLE
from tests.support import (
    ambientctl,
    get_json,
    local_cluster,
    namespace_manifest,
    pod_manifest,
    wait_for,
)

ECHO = ["python3", "-m", "samples.echo", "8080"]
PODS = [  # name, namespace, node, command, labels
    ("client", "plain", "node1", ["sleep", "infinity"], {}),
    ("web-a", "plain", "node1", ECHO, {"app": "web"}),
    ("web-b", "plain", "node2", ECHO, {"app": "web"}),
    ("server", "mesh", "node2", ECHO, {"app": "echo"}),
]


def _service(name: str, namespace: str, app: str, **spec: Any) -> str:
    body = {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}], **spec}
    meta = {"name": name, "namespace": namespace}
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with local_cluster(tmp_path_factory.mktemp("state")) as name:
        docs = [namespace_manifest("plain"), namespace_manifest("mesh")]
        ambientctl(name, "apply", "-f", "-", stdin="\n---\n".join(docs))
        ambientctl(name, "label", "namespace", "mesh", "istio.io/dataplane-mode=ambient")
        docs = [
            pod_manifest(n, ns, cmd, node=node, labels=labels) for n, ns, node, cmd, labels in PODS
        ]
        docs += [
            _service("web", "plain", "web"),
            _service("sticky", "plain", "web", sessionAffinity="ClientIP"),
            _service("nobody", "plain", "none"),
            _service("echo", "mesh", "echo"),
        ]
        ambientctl(name, "apply", "-f", "-", stdin="\n---\n".join(docs))
        services = (("web", "plain"), ("sticky", "plain"), ("nobody", "plain"), ("echo", "mesh"))
        vips = {
            s: get_json(name, "service", s, "-n", ns)["spec"]["clusterIP"] for s, ns in services
        }
        vips["cluster"] = name
        wait_for(lambda: _served_by(name, "plain/client", vips["echo"]) == "server", 20, "echo")
        yield vips


def _curl(cluster: str, pod: str, vip: str) -> subprocess.CompletedProcess[str]:
    args = ["exec", pod, "--", "curl", "-s", "-m", "3", f"http://{vip}:80/"]
    return ambientctl(cluster, *args, check=False)


def _served_by(cluster: str, pod: str, vip: str) -> str:
    """The pod that answered, or curl's exit code (7 refused, 28 timed out, 56 reset)."""
    done = _curl(cluster, pod, vip)
    if done.returncode != 0:
        return f"exit {done.returncode}"
    return str(json.loads(done.stdout)["pod"])


def test_an_unenrolled_pod_reaches_a_service_vip_and_every_endpoint(
    cluster: dict[str, str],
) -> None:
    seen = {_served_by(cluster["cluster"], "plain/client", cluster["web"]) for _ in range(24)}
    assert seen == {"web-a", "web-b"}  # random picks: both within 24 tries (p miss ~ 1e-7)


def test_client_ip_session_affinity_keeps_one_endpoint_across_rewrites(
    cluster: dict[str, str],
) -> None:
    name, vip = cluster["cluster"], cluster["sticky"]
    seen = {_served_by(name, "plain/client", vip) for _ in range(8)}
    # Another Service makes every node rewrite its table; the affinity entries are carried.
    ambientctl(name, "apply", "-f", "-", stdin=_service("later", "plain", "web"))
    wait_for(lambda: "svc-plain_later_80" in _table(name, "node1"), 5, "the rewrite")
    seen |= {_served_by(name, "plain/client", vip) for _ in range(8)}
    assert len(seen) == 1 and seen <= {"web-a", "web-b"}


def test_a_service_without_ready_endpoints_refuses_at_once(cluster: dict[str, str]) -> None:
    started = time.monotonic()
    assert _served_by(cluster["cluster"], "plain/client", cluster["nobody"]) == "exit 7"
    assert time.monotonic() - started < 2.5  # refused, not a 3 s timeout


def test_a_pod_reaches_itself_through_its_service(cluster: dict[str, str]) -> None:
    seen = {_served_by(cluster["cluster"], "plain/web-a", cluster["web"]) for _ in range(16)}
    assert "web-a" in seen and seen <= {"web-a", "web-b"}  # hairpin: masqueraded


def test_permissive_then_strict_for_a_plaintext_client_through_the_vip(
    cluster: dict[str, str],
) -> None:
    name, vip = cluster["cluster"], cluster["echo"]
    assert _served_by(name, "plain/client", vip) == "server"  # PERMISSIVE: let in
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": "mesh"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    ambientctl(name, "apply", "-f", "-", stdin=json.dumps(strict))
    try:
        wait_for(lambda: _served_by(name, "plain/client", vip).startswith("exit"), 5, "STRICT")
    finally:
        ambientctl(name, "delete", "-f", "-", stdin=json.dumps(strict))
    wait_for(lambda: _served_by(name, "plain/client", vip) == "server", 5, "PERMISSIVE again")


def test_an_endpoint_that_goes_away_leaves_the_rules(cluster: dict[str, str]) -> None:
    name = cluster["cluster"]
    gone = get_json(name, "pods", "web-b", "-n", "plain")["status"]["podIP"]
    assert f"dnat to {gone}:8080" in _table(name, "node1")
    ambientctl(name, "delete", "pod", "web-b", "-n", "plain")
    wait_for(lambda: f"{gone}:" not in _table(name, "node1"), 5, "web-b out of node1's rules")
    seen = {_served_by(name, "plain/client", cluster["web"]) for _ in range(8)}
    assert seen == {"web-a"}


def test_the_service_proxies_report_ready(cluster: dict[str, str]) -> None:
    name = cluster["cluster"]
    status = json.loads(ambientctl(name, "status", "-o", "json").stdout)
    health = {c["name"]: c["health"] for c in status["components"]}
    assert health["service-proxy-node1"] == health["service-proxy-node2"] == "Ready"


def _table(cluster: str, node: str) -> str:
    netns = naming.node_netns(cluster, node)
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "nft", "list", "table", "ip", TABLE],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _dry_runs(cluster: str) -> float:
    netns = naming.ztunnel_netns(cluster, "node2")
    status, body = http_get_in(netns, "127.0.0.1", ports.ZTUNNEL_METRICS, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("istio_dry_run_deny_shadow_denied_total "):
            return float(line.split()[1])
    raise AssertionError("no istio_dry_run_deny_shadow_denied_total")


def test_a_dry_run_deny_all_is_counted_and_lets_traffic_through(cluster: dict[str, str]) -> None:
    # Before: the annotation was ignored and this policy reset every connection to the server.
    name, vip = cluster["cluster"], cluster["echo"]
    deny_all = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "deny-all",
            "namespace": "mesh",
            "annotations": {"istio.io/dry-run": "true"},
        },
        "spec": {"action": "DENY", "rules": [{}]},
    }
    before = _dry_runs(name)
    ambientctl(name, "apply", "-f", "-", stdin=json.dumps(deny_all))
    try:

        def shadow_denied_and_served() -> bool:
            return _served_by(name, "plain/client", vip) == "server" and _dry_runs(name) > before

        wait_for(shadow_denied_and_served, 5, "a shadow denial of a request that got through")
    finally:
        ambientctl(name, "delete", "-f", "-", stdin=json.dumps(deny_all))
