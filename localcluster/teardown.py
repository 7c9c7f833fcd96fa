"""Removing clusters by what the kernel and the filesystem hold, not by what the store says.

`down` must work after a crash, a reboot or a deleted state directory, so it finds everything by
name: netns `am-<cluster>-*` (and every process inside them), bpf pins under
/sys/fs/bpf/ambientmesh/<cluster>, and the cluster's state directory. Nothing else is touched.
`python -m localcluster.teardown --test-leftovers` removes clusters left by crashed test runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass

from localcluster import naming
from localcluster import netns as kernel

DOWN_GRACE_S = 2.0


@dataclass(frozen=True)
class DownReport:
    cluster: str
    namespaces: int
    processes: int


def cluster_netns(cluster: str) -> list[str]:
    return [n for n in kernel.list_all() if naming.cluster_of_netns(n) == cluster]


def known_clusters() -> set[str]:
    """Clusters with anything left in the kernel or the state directory."""
    found = {c for n in kernel.list_all() if (c := naming.cluster_of_netns(n))}
    clusters_dir = naming.state_dir() / "clusters"
    if clusters_dir.is_dir():
        found |= {
            p.name for p in clusters_dir.iterdir() if naming.check_cluster_name(p.name) is None
        }
    if naming.BPF_PIN_ROOT.is_dir():
        found |= {p.name for p in naming.BPF_PIN_ROOT.iterdir()}
    return found


def down(cluster: str) -> DownReport:
    names = cluster_netns(cluster)
    killed = kernel.kill_processes_in(names, grace_s=DOWN_GRACE_S)
    for name in names:
        kernel.remove(name)
    shutil.rmtree(naming.bpf_pin_dir(cluster), ignore_errors=True)
    shutil.rmtree(naming.state_dir() / "clusters" / cluster, ignore_errors=True)
    return DownReport(cluster, len(names), killed)


def remove_test_leftovers() -> list[DownReport]:
    return [down(c) for c in sorted(known_clusters()) if c.startswith(naming.TEST_CLUSTER_PREFIX)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.teardown")
    parser.add_argument("--test-leftovers", action="store_true", required=True)
    parser.parse_args(argv)
    for report in remove_test_leftovers():
        print(
            f"removed leftover test cluster {report.cluster}: {report.namespaces} netns, "
            f"{report.processes} processes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
