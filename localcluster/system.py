"""The mesh's own components in a local cluster, run as their Kubernetes workloads would run:
the controller with host networking on node1 (as istiod on a control-plane node; reachable from
every node at 172.18.0.2), per node a node agent and a service proxy (kube-proxy's Service
VIPs, which a real cluster has) in the node's netns, and one ztunnel in its own netns (the
DaemonSet pod).
Each runs under a shim, so it is restarted if it exits, and `down` finds it by its netns.
They appear to `ambientctl logs` as `ambientmesh-system/<name>`.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import ports
from localcluster import naming, pods
from localcluster import netns as kernel
from localcluster.shim import ContainerSpec, ShimSpec
from localcluster.store import ClusterStore
from localcluster.topology import NodePlan

SYSTEM_NAMESPACE = "ambientmesh-system"
CONTROLLER = "controller"
READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
ZTUNNEL_GRACE_S = 8.0  # ztunnel drains for 5 s (its --drain) before the shim would SIGKILL it


@dataclass(frozen=True)
class Component:
    name: str  # "controller" or "ztunnel-<node>"
    node: str
    netns: str
    argv: list[str]


def controller_address(plans: list[NodePlan]) -> str:
    return f"{plans[0].node_ip}:{ports.CONTROLLER}"


def components(cluster: str, plans: list[NodePlan], ca_dir: str = "") -> list[Component]:
    python = [sys.executable, "-m"]
    first = plans[0]
    plugged = ["--ca-dir", ca_dir] if ca_dir else []
    out = [
        Component(
            CONTROLLER,
            first.name,
            naming.node_netns(cluster, first.name),
            [*python, "controller.main", "--cluster", cluster, *plugged],
        )
    ]
    for plan in plans:
        out.append(
            Component(
                f"node-agent-{plan.name}",
                plan.name,
                naming.node_netns(cluster, plan.name),
                [*python, "node_agent.main", "--cluster", cluster, "--node", plan.name],
            )
        )
    for plan in plans:
        out.append(  # kube-proxy's part: Service VIPs for pods outside the mesh
            Component(
                f"service-proxy-{plan.name}",
                plan.name,
                naming.node_netns(cluster, plan.name),
                [*python, "localcluster.serviceproxy", "--cluster", cluster, "--node", plan.name],
            )
        )
    for plan in plans:
        out.append(
            Component(
                f"ztunnel-{plan.name}",
                plan.name,
                naming.ztunnel_netns(cluster, plan.name),
                [
                    *python,
                    "ztunnel.main",
                    "--cluster",
                    cluster,
                    "--node",
                    plan.name,
                    "--controller",
                    controller_address(plans),
                ],
            )
        )
    return out


def find(cluster: str, plans: list[NodePlan], name: str) -> Component | None:
    return next((c for c in components(cluster, plans) if c.name == name), None)


def ensure_tokens(store: ClusterStore, plans: list[NodePlan]) -> None:
    """One bootstrap token per node (0600), the credential its ztunnel shows the CA, and the
    key pod tokens are signed with."""
    for path in [*(store.node_token_path(p.name) for p in plans), store.pod_token_key_path]:
        if not path.exists():
            write_secret(path, secrets.token_urlsafe(32))


def write_secret(path: Path, text: str) -> None:
    """Atomically, 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(text)
    tmp.replace(path)


def log_path(store: ClusterStore, name: str) -> Path:
    return store.system_dir(name) / f"{name}.log"


def _spec(store: ClusterStore, component: Component, run_dir: Path | None = None) -> ShimSpec:
    run_dir = run_dir or store.system_dir(component.name)
    argv = list(component.argv)
    if component.name.startswith("ztunnel-"):
        argv += ["--status-file", str(run_dir / "ztunnel.json")]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "PYTHONUNBUFFERED": "1",
        naming.STATE_DIR_ENV: str(naming.state_dir()),
    }
    container = ContainerSpec(
        component.name, argv, env, None, str(run_dir / f"{component.name}.log")
    )
    return ShimSpec(
        f"{SYSTEM_NAMESPACE}/{component.name}",
        [container],
        "Always",
        STOP_GRACE_S,
        str(run_dir / "status.json"),
        str(run_dir / "shim.pid"),
    )


def ensure_running(store: ClusterStore, comps: list[Component]) -> list[str]:
    started = []
    for component in comps:
        run_dir = store.system_dir(component.name)
        if pods.shim_pid_at(run_dir) is None:
            pods.launch(
                component.netns,
                run_dir,
                _spec(store, component),
                f"{SYSTEM_NAMESPACE}/{component.name}",
            )
            started.append(component.name)
    return started


def stop(store: ClusterStore, component: Component) -> None:
    pods.terminate(store.system_dir(component.name), STOP_GRACE_S)


def _handover_ready(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "ztunnel.json").read_text()).get("handoverReady"))
    except (OSError, ValueError):
        return False


def _launch_and_wait(store: ClusterStore, component: Component, run_dir: Path) -> None:
    (run_dir / "ztunnel.json").unlink(missing_ok=True)
    pods.launch(
        component.netns,
        run_dir,
        _spec(store, component, run_dir),
        f"{SYSTEM_NAMESPACE}/{component.name}",
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _handover_ready(run_dir):
        if time.monotonic() > deadline:
            raise pods.PodRuntimeError(
                f"{component.name}: new instance not ready after "
                f"{READY_TIMEOUT_S:.0f}s (see {run_dir})"
            )
        time.sleep(0.1)


def restart(store: ClusterStore, component: Component) -> None:
    """Restart a component. ztunnel without refusing a single new connection (F-4): a surge
    instance binds beside the old one (SO_REUSEPORT on every listener), takes over once it is
    ready with its certificates, the old one stops accepting — its pending connections migrate
    (net.ipv4.tcp_migrate_req) — and drains; then the same again to return to the main slot.
    Long-lived connections of a draining instance are cut at its drain deadline (documented)."""
    main_dir = store.system_dir(component.name)
    if not component.name.startswith("ztunnel-"):
        stop(store, component)
        ensure_running(store, [component])
        return
    surge_dir = store.system_dir(f"{component.name}-surge")
    _launch_and_wait(store, component, surge_dir)
    pods.terminate(main_dir, ZTUNNEL_GRACE_S)
    _launch_and_wait(store, component, main_dir)
    pods.terminate(surge_dir, ZTUNNEL_GRACE_S)


def agent_status(store: ClusterStore, node: str) -> dict[str, Any]:
    """What the node agent last reported (captured pods, verdict counters), or {}."""
    try:
        data: dict[str, Any] = json.loads(
            (store.root / "nodes" / node / "agent" / "status.json").read_text()
        )
    except (OSError, ValueError):
        return {}
    return data


def health(component: Component, store: ClusterStore | None = None) -> str:
    """`Ready`, or what it is waiting for."""
    if component.name.startswith("node-agent-"):
        if store is None:
            return "Unknown"
        return "Ready" if agent_status(store, component.node).get("ready") else "NotReady"
    if component.name.startswith("service-proxy-"):
        return _service_proxy_health(component, store)
    try:
        if component.name == CONTROLLER:
            kernel.connect_in(component.netns, "127.0.0.1", ports.CONTROLLER, 1.0).close()
            return "Ready"
        status, body = kernel.http_get_in(
            component.netns, "127.0.0.1", ports.ZTUNNEL_READINESS, "/healthz/ready", 1.0
        )
    except OSError as exc:
        return f"NotReady ({exc.strerror or exc})"
    return "Ready" if status == 200 else f"NotReady ({body.decode().strip()})"


def _service_proxy_health(component: Component, store: ClusterStore | None) -> str:
    if store is None:
        return "Unknown"
    try:
        status = json.loads((store.system_dir(component.name) / "serviceproxy.json").read_text())
    except (OSError, ValueError):
        return "NotReady (no rules applied yet)"
    if status.get("lastError"):
        return f"NotReady ({status['lastError']})"
    return "Ready" if status.get("ready") else "NotReady (no rules applied yet)"


def wait_ready(
    store: ClusterStore, comps: list[Component], timeout_s: float = READY_TIMEOUT_S
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states = {c.name: health(c, store) for c in comps}
    while any(s != "Ready" for s in states.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        states = {c.name: health(c, store) for c in comps}
    return states


def status(store: ClusterStore, comps: list[Component]) -> list[dict[str, Any]]:
    rows = []
    for component in comps:
        seen = pods.observe(store.system_dir(component.name))
        running = seen["shimAlive"] and all(c["running"] for c in seen["containers"].values())
        rows.append(
            {
                "name": component.name,
                "node": component.node,
                "netns": component.netns,
                "running": running,
                "restarts": sum(c["restarts"] for c in seen["containers"].values()),
                "health": health(component, store) if running else "NotRunning",
            }
        )
    return rows


METRICS_PORTS = {
    "controller": ports.CONTROLLER_METRICS,
    "node-agent": ports.NODE_AGENT_METRICS,
    "ztunnel": ports.ZTUNNEL_METRICS,
}


def metrics_get(component: Component) -> tuple[int, bytes]:
    """A component's Prometheus text, fetched inside its netns."""
    kind = component.name if component.name == CONTROLLER else component.name.rsplit("-", 1)[0]
    port = METRICS_PORTS.get(kind, ports.ZTUNNEL_METRICS)  # a pod: Istio's 15020
    return kernel.http_get_in(component.netns, "127.0.0.1", port, "/metrics")


def config_status(cluster: str, plans: list[NodePlan]) -> dict[str, Any]:
    """The controller's view of its config streams (`/debug/proxies`), or {} when unreachable."""
    controller = next(c for c in components(cluster, plans) if c.name == CONTROLLER)
    try:
        code, body = kernel.http_get_in(
            controller.netns, "127.0.0.1", ports.CONTROLLER_METRICS, "/debug/proxies"
        )
        data: dict[str, Any] = json.loads(body) if code == 200 else {}
    except (OSError, ValueError):
        return {}
    return data


def admin_get(cluster: str, node: str, path: str) -> tuple[int, bytes]:
    """A GET on a node's ztunnel admin port (loopback of the ztunnel netns only)."""
    return kernel.http_get_in(
        naming.ztunnel_netns(cluster, node), "127.0.0.1", ports.ZTUNNEL_ADMIN, path
    )
