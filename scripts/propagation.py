"""Control-plane propagation, measured: from `ambientctl` issuing a change to every node's ztunnel
showing it in `/config_dump` (includes the ambientctl process start, ~0.15 s of it).

Builds its own cluster (3 nodes, the demo app), repeats label / apply / delete N times, prints
median and max per kind of change, and removes the cluster.
Usage: scripts/propagation [--reps N] [--nodes N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from localcluster import probe, teardown
from localcluster.store import ClusterStore

REPO = Path(__file__).resolve().parents[1]
AMBIENTCTL = [sys.executable, "-m", "ambientctl.main"]
POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: probe, namespace: demo}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [nowhere]}}]}]}
"""


def ctl(cluster: str, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [*AMBIENTCTL, *args, "--cluster", cluster],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
        cwd=REPO,
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/propagation")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    cluster = f"prop{os.urandom(2).hex()}"
    nodes = [f"node{i}" for i in range(1, args.nodes + 1)]
    results: dict[str, list[float]] = {"label": [], "apply": [], "delete": []}
    commit_to_proxy: list[float] = []  # from the store's commit (file mtime) on
    try:
        ctl(cluster, "up", "--nodes", str(args.nodes))
        ctl(cluster, "apply", "-f", str(REPO / "manifests/demo/app.yaml"))
        for i in range(args.reps):
            mode = "ambient" if i % 2 == 0 else "none"
            t = time.monotonic()
            ctl(
                cluster,
                "label",
                "namespace",
                "demo",
                f"istio.io/dataplane-mode={mode}",
                "--overwrite",
            )
            check = probe.workload_enrolled("client", mode == "ambient")
            results["label"].append(probe.wait_all(cluster, ["node1"], check, t))
            t = time.monotonic()
            ctl(cluster, "apply", "-f", "-", stdin=POLICY)
            results["apply"].append(
                probe.wait_all(cluster, nodes[:2], probe.has_policy("demo/probe"), t)
            )
            t = time.monotonic()
            ctl(cluster, "delete", "authorizationpolicy", "probe", "-n", "demo")
            gone = probe.has_policy("demo/probe", present=False)
            results["delete"].append(probe.wait_all(cluster, nodes[:2], gone, t))
            commit = ClusterStore(cluster).objects_path.stat().st_mtime
            commit_to_proxy.append(time.time() - commit)
    finally:
        teardown.down(cluster)
    print(f"propagation over {args.reps} reps, {args.nodes} nodes (seconds, incl. ambientctl):")
    for kind, values in results.items():
        print(f"  {kind:<7} median {statistics.median(values):.3f}  max {max(values):.3f}")
    print(
        f"  store commit → every ztunnel (delete): median {statistics.median(commit_to_proxy):.3f}"
        f"  max {max(commit_to_proxy):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
