"""Names of everything a local cluster creates, derived from the cluster name alone.

Every kernel object lives inside a network namespace whose name starts with `am-<cluster>-`, so
`ambientctl down` can find all of it even when the state directory is gone, and two clusters never
share a name. Cluster names are lowercase alphanumerics (no '-') so that prefix is unambiguous;
node netns names never contain '.', pod netns names always do (namespaces cannot contain '.').
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

NETNS_PREFIX = "am-"
NETNS_DIR = Path("/run/netns")
BPF_PIN_ROOT = Path("/sys/fs/bpf/ambientmesh")
STATE_DIR_ENV = "AMBIENTMESH_STATE_DIR"
CLUSTER_ENV = "AMBIENTMESH_CLUSTER"
DEFAULT_STATE_DIR = Path("/var/lib/ambientmesh")
DEFAULT_CLUSTER = "ambient"
# Clusters made by tests start with this, so `make test` can remove a crashed run's leftovers
# without touching a user's cluster.
TEST_CLUSTER_PREFIX = "tst"

_CLUSTER_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_NETNS_NAME_MAX = 200  # well below NAME_MAX (255) of /run/netns entries
IFNAME_MAX = 15  # IFNAMSIZ - 1


def check_cluster_name(name: str) -> str | None:
    """None if valid, else the reason."""
    if _CLUSTER_RE.match(name):
        return None
    return f"cluster name {name!r} must be 1-16 lowercase letters or digits, starting with a letter"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def cluster_prefix(cluster: str) -> str:
    return f"{NETNS_PREFIX}{cluster}-"


def underlay_netns(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}underlay"


def node_netns(cluster: str, node: str) -> str:
    return f"{cluster_prefix(cluster)}{node}"


def ztunnel_netns(cluster: str, node: str) -> str:
    return f"{cluster_prefix(cluster)}{node}-ztunnel"


def pod_netns(cluster: str, namespace: str, name: str) -> str:
    full = f"{cluster_prefix(cluster)}{namespace}.{name}"
    if len(full) <= _NETNS_NAME_MAX:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    return f"{full[: _NETNS_NAME_MAX - 13]}-{digest}"


def host_veth(uid: str) -> str:
    """Host-side veth of a pod, like Calico's `cali<hash>`: unique per pod incarnation."""
    return "am" + hashlib.sha256(uid.encode()).hexdigest()[: IFNAME_MAX - 2]


def cluster_of_netns(netns: str) -> str | None:
    """The cluster a netns belongs to, if it is one of ours."""
    if not netns.startswith(NETNS_PREFIX):
        return None
    cluster, sep, _ = netns[len(NETNS_PREFIX) :].partition("-")
    return cluster if sep and check_cluster_name(cluster) is None else None


def bpf_pin_dir(cluster: str) -> Path:
    return BPF_PIN_ROOT / cluster
