"""`make demo`'s main job, end to end, in a test-named cluster."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localcluster import naming, teardown
from tests.support import leftovers

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_a_request_from_client_to_server(state_dir: Path, cluster_name: str) -> None:
    env = {**os.environ, naming.CLUSTER_ENV: cluster_name}
    try:
        for _ in range(2):  # idempotent: the second run reuses the cluster
            done = subprocess.run(
                [str(REPO / "scripts" / "demo")],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert '"pod": "server"' in done.stdout
            assert '"client": "10.244.1.3:' in done.stdout  # the client pod's own IP, no NAT
            assert 'source_principal="spiffe://cluster.local/ns/demo/sa/client"' in done.stdout
            assert "REDIRECTED" in done.stdout
            assert "Try next:" in done.stdout
            assert (
                "spiffe://cluster.local/ns/demo/sa/client  held by the ztunnel of node1: "
                "Available" in done.stdout
            )
    finally:
        teardown.down(cluster_name)
    assert leftovers(cluster_name) == []
