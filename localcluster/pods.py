"""Pod runtime: network wiring, the shim that runs containers, stopping, and observed status.

The cluster layer decides (which node, which IP); this module makes it so in the kernel and the
process table, and reads back what is actually running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import ports
from api.objects import Obj
from localcluster import naming
from localcluster import netns as kernel
from localcluster.shim import ContainerSpec, ShimSpec
from localcluster.store import ClusterStore
from localcluster.topology import NodePlan

SHIM_START_TIMEOUT_S = 10.0
RESERVED_PORTS_SYSCTL = "net/ipv4/ip_local_reserved_ports"
# Pods run host programs. PATH puts ambientmesh's venv first so `python3` has its libraries.
_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodRuntimeError(RuntimeError):
    """A pod could not be started or stopped."""


@dataclass(frozen=True)
class PodRef:
    cluster: str
    namespace: str
    name: str

    @property
    def netns(self) -> str:
        return naming.pod_netns(self.cluster, self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_ref(cluster: str, pod: Obj) -> PodRef:
    return PodRef(cluster, pod["metadata"]["namespace"], pod["metadata"]["name"])


def container_env(pod: Obj, container: dict[str, Any]) -> dict[str, str]:
    """A small, predictable environment (the caller's is not leaked into pods)."""
    meta = pod["metadata"]
    env = {
        "PATH": f"{Path(sys.executable).parent}:{_BASE_PATH}",
        "HOME": "/root",
        "HOSTNAME": meta["name"],
        "POD_NAME": meta["name"],
        "POD_NAMESPACE": meta["namespace"],
        "POD_IP": pod.get("status", {}).get("podIP", ""),
        "NODE_NAME": pod["spec"].get("nodeName", ""),
        "PYTHONUNBUFFERED": "1",
    }
    env.update({e["name"]: e.get("value", "") for e in container.get("env") or []})
    return env


def shim_spec(store: ClusterStore, pod: Obj) -> ShimSpec:
    meta, spec = pod["metadata"], pod["spec"]
    pod_dir = store.pod_dir(meta["namespace"], meta["name"])
    containers = [
        ContainerSpec(
            name=c["name"],
            argv=[*c["command"], *(c.get("args") or [])],
            env=container_env(pod, c),
            cwd=c.get("workingDir"),
            log=str(pod_dir / f"{c['name']}.log"),
        )
        for c in spec["containers"]
    ]
    return ShimSpec(
        pod=f"{meta['namespace']}/{meta['name']}",
        containers=containers,
        restart_policy=spec["restartPolicy"],
        grace_s=float(spec["terminationGracePeriodSeconds"]),
        status_path=str(pod_dir / "status.json"),
        pid_path=str(pod_dir / "shim.pid"),
    )


def _proc_start_time(pid: int) -> str | None:
    """Start time of a live process; None when gone or a zombie (init may reap late)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def shim_pid_at(run_dir: Path) -> int | None:
    """The live shim's pid, verified by its start time (so a reused pid is never signalled)."""
    try:
        pid_s, start = (run_dir / "shim.pid").read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if _proc_start_time(pid) == start else None


def shim_pid(store: ClusterStore, ref: PodRef) -> int | None:
    return shim_pid_at(store.pod_dir(ref.namespace, ref.name))


def wire(node: NodePlan, cluster: str, ref: PodRef, pod: Obj) -> None:
    kernel.wire_pod(
        naming.node_netns(cluster, node.name),
        ref.netns,
        host_if=naming.host_veth(pod["metadata"]["uid"]),
        pod_ip=pod["status"]["podIP"],
        gateway_ip=node.gateway_ip,
    )
    kernel.set_sysctls(ref.netns, {RESERVED_PORTS_SYSCTL: ports.POD_RESERVED_PORTS})


def launch(netns: str, run_dir: Path, spec: ShimSpec, what: str) -> None:
    """Start a shim running `spec` inside `netns`; returns once the shim is up."""
    run_dir.mkdir(parents=True, exist_ok=True)
    Path(spec.status_path).unlink(missing_ok=True)
    spec_path = run_dir / "shim.json"
    spec.dump(spec_path)
    argv = ["nsenter", f"--net={naming.NETNS_DIR / netns}", "--"]
    argv += [sys.executable, "-m", "localcluster.shim", str(spec_path)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SHIM_START_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise PodRuntimeError(f"{what}: shim did not start in {SHIM_START_TIMEOUT_S}s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PodRuntimeError(f"{what}: shim failed to start: {detail}")


def start(store: ClusterStore, ref: PodRef, pod: Obj) -> None:
    """Start the pod's shim inside its netns."""
    launch(ref.netns, store.pod_dir(ref.namespace, ref.name), shim_spec(store, pod), f"pod {ref}")


def terminate(run_dir: Path, grace_s: float) -> None:
    """SIGTERM a shim and wait for it to stop its containers (it SIGKILLs them after grace)."""
    pid = shim_pid_at(run_dir)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 2.0
    while shim_pid_at(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def stop(store: ClusterStore, ref: PodRef, grace_s: float) -> None:
    """Stop the pod's containers (SIGTERM, then SIGKILL after grace) and remove its netns."""
    terminate(store.pod_dir(ref.namespace, ref.name), grace_s)
    kernel.kill_processes_in([ref.netns], grace_s=1.0)
    kernel.remove(ref.netns)


def observe(run_dir: Path) -> dict[str, Any]:
    """What is actually running: shim alive, per-container state from the shim's status file."""
    alive = shim_pid_at(run_dir) is not None
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    return {"shimAlive": alive, "containers": status.get("containers", {})}


def container_pid(run_dir: Path, container: str) -> int | None:
    """The pid of a running container of a shim (pod or system component), from its status."""
    pid = observe(run_dir)["containers"].get(container, {}).get("pid")
    return int(pid) if pid else None


def observed(store: ClusterStore, ref: PodRef) -> dict[str, Any]:
    return observe(store.pod_dir(ref.namespace, ref.name))


def phase(observation: dict[str, Any], netns_present: bool) -> str:
    """A kubectl-like STATUS column from an observation (pure). First matching rule wins."""
    containers = list(observation["containers"].values())
    alive = observation["shimAlive"]
    finished = bool(containers) and all(c["done"] for c in containers)
    rules = [
        (not netns_present, "NetworkMissing"),
        (finished and all(c["lastExitCode"] == 0 for c in containers), "Completed"),
        (finished, "Error"),
        (not alive, "Unknown"),
        (any(c["error"] for c in containers), "StartError"),
        (bool(containers) and all(c["running"] for c in containers), "Running"),
        (any(c["restarts"] for c in containers), "CrashLoopBackOff"),
    ]
    return next((label for matched, label in rules if matched), "ContainerCreating")
