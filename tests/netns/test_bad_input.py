"""Bad input gets one line naming the object and field, exit 1, and changes nothing."""

from __future__ import annotations

import pytest

from localcluster.store import ClusterStore
from tests.support import ambientctl, cluster_netns, pod_manifest

GOOD_POD = pod_manifest("ok", "default", ["sleep", "infinity"])
CASES = {
    "malformed yaml": ("kind: Pod\nmetadata: [unclosed\n", "invalid YAML"),
    "unknown kind": (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        "kind: unknown kind 'Deployment'",
    ),
    "pod on a missing node": (
        pod_manifest("p", "default", ["sleep", "1"], node="node9"),
        "Pod \"default/p\": spec.nodeName: node 'node9' not found",
    ),
    "two objects of one kind and name": (
        GOOD_POD + "\n---\n" + GOOD_POD,
        'Pod "default/ok" appears twice',
    ),
    "invalid label": (
        pod_manifest("p", "default", ["sleep", "1"], labels={"a b": "c"}),
        'Pod "default/p": metadata.labels: label key',
    ),
    "missing namespace": (
        pod_manifest("p", "nowhere", ["sleep", "1"]),
        "namespace 'nowhere' not found",
    ),
    "second object bad after a good one": (
        GOOD_POD + "\n---\n" + pod_manifest("p", "default", ["sleep", "1"], node="node9"),
        "spec.nodeName",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_and_changes_nothing(cluster: str, case: str) -> None:
    text, expected = CASES[case]
    store = ClusterStore(cluster)
    before = (store.objects_path.read_bytes(), cluster_netns(cluster))
    done = ambientctl(cluster, "apply", "-f", "-", stdin=text, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert (store.objects_path.read_bytes(), cluster_netns(cluster)) == before


def test_unknown_cluster_and_bad_cluster_name(state_dir: object) -> None:
    done = ambientctl("tstnothere", "get", "pods", check=False)
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = ambientctl("Bad-Name", "up", check=False)
    assert done.returncode == 1 and "cluster name 'Bad-Name'" in done.stderr
