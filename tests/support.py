"""Helpers for the root tiers: run the real `ambientctl`, look at the kernel afterwards."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from api import ports
from localcluster import naming, teardown
from localcluster import netns as kernel
from node_agent import attach

AMBIENTCTL = str(Path(sys.executable).parent / "ambientctl")


def ambientctl(
    cluster: str, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [AMBIENTCTL, *args, "--cluster", cluster]
        if "--" not in args
        else [
            AMBIENTCTL,
            *args[: args.index("--")],
            "--cluster",
            cluster,
            *args[args.index("--") :],
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"ambientctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


def get_json(cluster: str, *args: str) -> Any:
    return json.loads(ambientctl(cluster, "get", *args, "-o", "json").stdout)


def cluster_netns(cluster: str) -> list[str]:
    return [n for n in kernel.list_all() if naming.cluster_of_netns(n) == cluster]


def leftovers(cluster: str) -> list[str]:
    """Everything of a cluster still on the machine (empty after a clean `down`)."""
    found = [f"netns {n}" for n in cluster_netns(cluster)]
    state = naming.state_dir() / "clusters" / cluster
    if state.exists():
        found.append(f"state dir {state}")
    if naming.bpf_pin_dir(cluster).exists():
        found.append(f"bpf pins {naming.bpf_pin_dir(cluster)}")
    markers = (str(state), f"--cluster\0{cluster}\0")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(m in cmdline for m in markers):
                found.append(f"process {entry.name}: {cmdline.replace(chr(0), ' ')}")
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")


def pod_manifest(
    name: str,
    namespace: str,
    command: list[str],
    *,
    node: str | None = None,
    labels: dict[str, str] | None = None,
    restart: str = "Always",
    service_account: str = "default",
) -> str:
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "command": command}],
    }
    if node:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})


def namespace_manifest(name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def http_probe(cluster: str, pod: str, urls: list[str]) -> dict[str, str]:
    """From inside `pod`, GET each URL once with curl; map URL → HTTP code ('000' = no answer)."""
    script = 'for u in "$@"; do echo "$u $(curl -s -o /dev/null -m 3 -w %{http_code} "$u")"; done'
    out = ambientctl(
        cluster, "exec", pod, "--", "sh", "-c", script, "probe", *urls, check=False
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def exec_background(cluster: str, pod: str, *command: str) -> subprocess.Popen[str]:
    """`ambientctl exec POD -- COMMAND` left running (stdout piped) while the test acts."""
    return subprocess.Popen(
        [AMBIENTCTL, "exec", pod, "--cluster", cluster, "--", *command],
        stdout=subprocess.PIPE,
        text=True,
    )


DEMO = Path(__file__).resolve().parents[1] / "manifests" / "demo" / "app.yaml"


@contextmanager
def local_cluster(state_dir: Path) -> Iterator[str]:
    """A test cluster of its own name (state in `state_dir`), up; removed, and checked to leave
    nothing behind, afterwards."""
    os.environ[naming.STATE_DIR_ENV] = str(state_dir)
    name = f"{naming.TEST_CLUSTER_PREFIX}{os.urandom(3).hex()}"
    try:
        ambientctl(name, "up")
        yield name
    finally:
        teardown.down(name)
        assert leftovers(name) == []
        os.environ.pop(naming.STATE_DIR_ENV, None)


@contextmanager
def demo_cluster(state_dir: Path) -> Iterator[str]:
    """A test cluster running the demo app (`local_cluster`)."""
    with local_cluster(state_dir) as name:
        ambientctl(name, "apply", "-f", str(DEMO))
        yield name


def agent_readiness(node_ns: str) -> tuple[int, str]:
    """A node agent's `/healthz/ready` in its node netns: (status, body); (0, "") while
    nothing answers there."""
    try:
        code, body = kernel.http_get_in(
            node_ns, "127.0.0.1", ports.NODE_AGENT_METRICS, "/healthz/ready"
        )
    except OSError:
        return 0, ""
    return code, body.decode()


def our_filters(netns: str | None) -> int:
    """How many tc filters of ours (the agent's priority) are on any link of `netns` (None:
    this one). A link without a clsact qdisc lists none; only a link that vanished during the
    scan is passed over (anything else raises: a count of 0 must mean none)."""
    count = 0
    with attach._ipr(netns) as ipr:
        for link in ipr.get_links():
            for parent in (attach.INGRESS, attach.EGRESS):
                try:
                    filters = ipr.get_filters(link["index"], parent=parent)
                except NetlinkError as exc:
                    if exc.code in (errno.ENODEV, errno.ENOENT):
                        continue
                    raise
                count += sum(1 for f in filters if (int(f["info"]) >> 16) == attach.PRIO)
    return count
