"""The waypoint in a running 2-node cluster (issue: waypoint): HTTP/1.1 and HTTP/2 requests
authorized per request with an L7 policy bound to a Service, WebSocket authorized at its
handshake and then relayed, the destination ztunnel refusing
whatever did not come through the waypoint, smuggling refused before the backend, TCP carried
with L4 rules only, and Istio's request metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support import ambientctl, demo_cluster, exec_background, get_json, wait_for

EXTRA = """
apiVersion: v1
kind: Pod
metadata: {name: grpcish, namespace: demo, labels: {app: grpcish}}
spec:
  serviceAccountName: grpcish
  nodeName: node2
  containers:
  - {name: h2, command: ["python3", "-m", "samples.h2echo", "9090"]}
---
apiVersion: v1
kind: Service
metadata: {name: grpcish, namespace: demo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: grpcish}
  ports: [{name: grpc, port: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: demo, labels: {app: echo}}
spec:
  nodeName: node2
  containers:
  - {name: echo, command: ["python3", "-m", "samples.tcpecho", "serve", "7000"]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: echo}
  ports: [{name: tcp-echo, port: 7000}]
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: outside}
spec:
  nodeName: node1
  containers:
  - {name: shell, command: ["sleep", "infinity"]}
"""
POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-api-only, namespace: demo}
spec:
  targetRefs:
  - {kind: Service, group: "", name: server}
  - {kind: Service, group: "", name: grpcish}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
"""
SMUGGLE = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], 8080), timeout=3)\n"
    "s.sendall(b'POST /api/x HTTP/1.1\\r\\nHost: server\\r\\nContent-Length: 4\\r\\n'\n"
    "          b'Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n'\n"
    "          b'GET /api/smuggled HTTP/1.1\\r\\nHost: server\\r\\n\\r\\n')\n"
    "print(s.recv(4096).decode().splitlines()[0])\n"
)

# A WebSocket handshake, a "frame" sent in the same write (a client need not wait for the 101
# with its bytes in flight), more bytes after the 101, a half-close, and what comes back.
WEBSOCKET = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], 8080), timeout=3)\n"
    "s.sendall(b'GET ' + sys.argv[2].encode() + b' HTTP/1.1\\r\\nHost: server\\r\\n'\n"
    "          b'Connection: Upgrade\\r\\nUpgrade: websocket\\r\\n'\n"
    "          b'Sec-WebSocket-Version: 13\\r\\n'\n"
    "          b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n<early>')\n"
    "got = b''\n"
    "while b'\\r\\n\\r\\n' not in got and (data := s.recv(4096)):\n"
    "    got += data\n"
    "s.sendall(b'<late>')\n"
    "s.shutdown(socket.SHUT_WR)\n"
    "while data := s.recv(4096):\n"
    "    got += data\n"
    "print(repr(got))\n"
)

# A WebSocket that stays open: `open` once switched, then how it ended.
WEBSOCKET_HELD = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], 8080), timeout=30)\n"
    "s.sendall(b'GET /api/ws HTTP/1.1\\r\\nHost: server\\r\\nConnection: Upgrade\\r\\n'\n"
    "          b'Upgrade: websocket\\r\\n'\n"
    "          b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n')\n"
    "print('open' if s.recv(4096).startswith(b'HTTP/1.1 101') else 'refused', flush=True)\n"
    "try:\n"
    "    print('cut' if not s.recv(4096) else 'data')\n"
    "except OSError as exc:\n"
    "    print('cut', exc)\n"
)
DENY_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  targetRefs:
  - {kind: Service, group: "", name: server}
  - {kind: Service, group: "", name: echo}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with demo_cluster(tmp_path_factory.mktemp("state")) as name:
        ambientctl(name, "apply", "-f", "-", stdin=EXTRA)
        ambientctl(name, "label", "namespace", "demo", "istio.io/dataplane-mode=ambient")
        ambientctl(name, "waypoint", "apply", "-n", "demo")
        ambientctl(
            name, "label", "service", "server", "-n", "demo", "istio.io/use-waypoint=waypoint"
        )
        ambientctl(name, "apply", "-f", "-", stdin=POLICY)
        yield name


def vip(cluster: str, service: str) -> str:
    return str(get_json(cluster, "service", service, "-n", "demo")["spec"]["clusterIP"])


def pod_ip(cluster: str, pod: str) -> str:
    return str(get_json(cluster, "pod", pod, "-n", "demo")["status"]["podIP"])


def curl(cluster: str, pod: str, *args: str) -> str:
    """`<status> <body>` as the pod's curl saw it (status 000: no HTTP answer)."""
    done = ambientctl(
        cluster,
        "exec",
        pod,
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        "-w",
        "\n%{http_code}",
        *args,
        check=False,
    )
    body, _, status = done.stdout.rpartition("\n")
    return f"{status} {body}".strip()


def metric(cluster: str, component: str, name: str, **labels: str) -> float:
    text = ambientctl(cluster, "metrics", component).stdout
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_allowed_requests_pass_and_denied_ones_get_403_with_metrics(cluster: str) -> None:
    url = f"http://{vip(cluster, 'server')}:8080"
    wait_for(lambda: curl(cluster, "demo/client", f"{url}/api/items").startswith("200"), 10)
    allowed = curl(cluster, "demo/client", f"{url}/api/items")
    assert allowed.startswith("200") and '"path": "/api/items"' in allowed
    waypoint_ip = pod_ip(cluster, "waypoint")
    assert f'"client": "{waypoint_ip}:' in allowed, "the server is reached from the waypoint"
    assert curl(cluster, "demo/client", f"{url}/hello") == "403 RBAC: access denied"
    assert curl(cluster, "demo/client", "-X", "POST", f"{url}/api/items").startswith("403")
    # The pod's own IP is fronted too, and judged by the Service's policy (no side door).
    direct = f"http://{pod_ip(cluster, 'server')}:8080"
    assert curl(cluster, "demo/client", f"{direct}/admin") == "403 RBAC: access denied"
    assert curl(cluster, "demo/client", f"{direct}/api/x").startswith("200")
    for code, least in (("200", 2), ("403", 3)):
        count = metric(
            cluster,
            "demo/waypoint",
            "istio_requests_total",
            reporter="waypoint",
            response_code=code,
            source_workload="client",
            request_protocol="http",
        )
        assert count >= least, f"istio_requests_total response_code={code}: {count}"
    # The destination ztunnel saw the waypoint's identity, and the client by `Forwarded`.
    seen = metric(
        cluster,
        "ztunnel-node2",
        "istio_tcp_connections_opened_total",
        reporter="destination",
        source_principal="spiffe://cluster.local/ns/demo/sa/waypoint",
        source_workload="client",
    )
    assert seen >= 1


def test_traffic_that_bypasses_the_waypoint_is_refused(cluster: str) -> None:
    before = metric(
        cluster, "ztunnel-node2", "ambientmesh_ztunnel_rejections_total", reason="bypassed_waypoint"
    )
    direct = f"http://{pod_ip(cluster, 'server')}:8080/api/x"
    assert curl(cluster, "outside/outsider", direct).startswith("000")
    after = metric(
        cluster, "ztunnel-node2", "ambientmesh_ztunnel_rejections_total", reason="bypassed_waypoint"
    )
    assert after == before + 1


def test_request_smuggling_gets_400_and_never_reaches_the_backend(cluster: str) -> None:
    done = ambientctl(
        cluster,
        "exec",
        "demo/client",
        "--",
        "python3",
        "-c",
        SMUGGLE,
        vip(cluster, "server"),
        check=False,
    )
    assert re.match(r"HTTP/1.1 400", done.stdout), done.stdout + done.stderr
    log = ambientctl(cluster, "logs", "demo/server").stdout
    assert "/api/smuggled" not in log and "POST /api/x" not in log


def test_a_websocket_is_authorized_at_its_handshake_then_relayed_both_ways(cluster: str) -> None:
    def websocket(path: str) -> str:
        args = ["exec", "demo/client", "--", "python3", "-c", WEBSOCKET, vip(cluster, "server")]
        done = ambientctl(cluster, *args, path, check=False)
        return done.stdout + done.stderr

    opened = websocket("/api/ws")
    assert opened.startswith("b'HTTP/1.1 101 Switching Protocols"), opened
    assert "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in opened
    assert opened.rstrip().endswith("\\r\\n\\r\\n<early><late>'"), opened
    denied = websocket("/ws")
    assert denied.startswith("b'HTTP/1.1 403 Forbidden") and "RBAC: access denied" in denied
    assert "connection: close" in denied


def test_http2_prior_knowledge_is_authorized_per_stream(cluster: str) -> None:
    url = f"http://{vip(cluster, 'grpcish')}:9090"
    h2 = "--http2-prior-knowledge"
    wait_for(lambda: curl(cluster, "demo/client", h2, f"{url}/api/a").startswith("200"), 10)
    ok = curl(cluster, "demo/client", h2, f"{url}/api/a")
    assert ok.startswith("200") and '"path": "/api/a"' in ok
    assert curl(cluster, "demo/client", h2, f"{url}/admin") == "403 RBAC: access denied"


def test_tcp_through_the_waypoint_has_l4_rules_only(cluster: str) -> None:
    """A `tcp-` port is carried as TCP (no HTTP parsing); no policy binds the echo Service."""
    target = vip(cluster, "echo")
    done = ambientctl(
        cluster,
        "exec",
        "demo/client",
        "--",
        "python3",
        "-m",
        "samples.tcpecho",
        "stream",
        target,
        "7000",
        "1",
        check=False,
    )
    assert done.stdout.startswith("OK"), done.stdout + done.stderr
    opened = metric(
        cluster,
        "demo/waypoint",
        "istio_tcp_connections_opened_total",
        reporter="waypoint",
        destination_service="echo.demo.svc.cluster.local",
    )
    assert opened >= 1


MESH_CONFIG = """
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    pathNormalization:
      normalization: %s
"""


def test_path_bypass_the_backend_receives_the_path_policy_judged(cluster: str) -> None:
    """RELIABILITY W-4 / W-6 through a real waypoint: with ALLOW paths ["/api/*"], what the
    backend receives is what policy judged (BASE, Istio's default); MeshConfig changes the mode
    and a bad one is refused at apply."""
    url = f"http://{vip(cluster, 'server')}:8080"

    def path_as_is(path: str, *args: str) -> str:
        return curl(cluster, "demo/client", "--path-as-is", *args, f"{url}{path}")

    assert path_as_is("/api/%2e%2e/admin") == "403 RBAC: access denied"
    assert path_as_is("/api/.%2E/admin") == "403 RBAC: access denied"
    for refused in ("/api/..;/admin", "/api/..%2fadmin", "/api/%c0%ae%c0%ae/admin", "/api/%00"):
        assert path_as_is(refused).startswith("400"), refused
    judged = path_as_is("/api/x/%2e%2e/items?q=/../admin")
    assert judged.startswith("200") and '"path": "/api/items?q=/../admin"' in judged, judged
    h2 = f"http://{vip(cluster, 'grpcish')}:9090"
    args = ("--path-as-is", "--http2-prior-knowledge", f"{h2}/api/b/%2e%2e/c")
    over_h2 = curl(cluster, "demo/client", *args)
    assert over_h2.startswith("200") and '"path": "/api/c"' in over_h2, over_h2
    assert path_as_is("//api/items").startswith("403"), "BASE keeps repeated slashes"
    bad = ambientctl(cluster, "apply", "-f", "-", stdin=MESH_CONFIG % "BOGUS", check=False)
    assert bad.returncode != 0
    assert "data.mesh.pathNormalization.normalization" in bad.stdout + bad.stderr
    ambientctl(cluster, "apply", "-f", "-", stdin=MESH_CONFIG % "MERGE_SLASHES")
    try:
        wait_for(lambda: path_as_is("//api/items").startswith("200"), 10, "MERGE_SLASHES")
        merged = path_as_is("//api//items")
        assert '"path": "/api/items"' in merged, merged
    finally:
        ambientctl(cluster, "delete", "configmap", "istio", "-n", "istio-system")
    wait_for(lambda: path_as_is("//api/items").startswith("403"), 10, "back to BASE")


def test_open_tcp_and_websockets_are_cut_when_policy_changes_to_deny_them(cluster: str) -> None:
    """RELIABILITY F-10 at the waypoint: what outlives the request that authorized it (a TCP
    relay, a WebSocket) is judged again on a policy change, and closed once denied. Runs last:
    it denies the client."""

    def opened() -> float:
        return metric(
            cluster,
            "demo/waypoint",
            "istio_tcp_connections_opened_total",
            destination_service="echo.demo.svc.cluster.local",
        )

    before = opened()
    tcp = exec_background(
        cluster,
        "demo/client",
        "python3",
        "-m",
        "samples.tcpecho",
        "stream",
        vip(cluster, "echo"),
        "7000",
        "20",
    )
    websocket = exec_background(
        cluster, "demo/client", "python3", "-c", WEBSOCKET_HELD, vip(cluster, "server")
    )
    try:
        assert websocket.stdout is not None and websocket.stdout.readline().strip() == "open"
        wait_for(lambda: opened() > before, 10, "the TCP relay through the waypoint")
        ambientctl(cluster, "apply", "-f", "-", stdin=DENY_CLIENT)
        out, _ = websocket.communicate(timeout=15)
        assert out.startswith("cut"), out
        out, _ = tcp.communicate(timeout=15)
        assert out.startswith("FAIL") and tcp.returncode == 1, out
        log = ambientctl(cluster, "logs", "demo/waypoint").stdout
        assert "WebSocket" in log and "closed: policy changed: denied_by_policy" in log
        assert re.search(r"TCP \S+->\S+:7000 closed: policy changed", log), log[-2000:]
        assert curl(
            cluster, "demo/client", f"http://{vip(cluster, 'server')}:8080/api/x"
        ).startswith("403")
    finally:
        for process in (tcp, websocket):
            if process.poll() is None:
                process.kill()
                process.wait()
        ambientctl(cluster, "delete", "authorizationpolicy", "deny-client", "-n", "demo")
