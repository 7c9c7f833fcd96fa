"""RELIABILITY L-6 on the real kernel: a process in a memory cgroup with a limit reads its own
working set against that limit (ztunnel.proxy.overload, v1 or v2, whichever this kernel
mounts) and passes through every shedding stage as it grows, without ever reaching the limit."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")
LIMIT = 256 << 20

# Runs in the cgroup: grows in 2 MiB steps (touched, so charged) until the last stage, then
# reports the stages it saw and the limit it read.
CHILD = """
import json, sys
from ztunnel.proxy import overload
sample = overload.sampler(0)
seen, held = [], []
for _ in range(400):
    usage = sample()
    stage = overload.stage_of(usage)
    if not seen or seen[-1] != stage.name:
        seen.append(stage.name)
    if stage is overload.Stage.RESET_HEAVIEST:
        break
    held.append(bytearray(b"x" * (2 << 20)))
print(json.dumps({"stages": seen, "limit": usage.limit if usage else None}))
"""


def _cgroup_dir(name: str) -> tuple[Path, str]:
    """A new memory cgroup under the hierarchy's root, and its limit file."""
    if (ROOT / "memory" / "memory.usage_in_bytes").exists():
        return ROOT / "memory" / name, "memory.limit_in_bytes"
    if "memory" not in (ROOT / "cgroup.subtree_control").read_text().split():
        (ROOT / "cgroup.subtree_control").write_text("+memory")
    return ROOT / name, "memory.max"


@pytest.fixture
def cgroup() -> Iterator[tuple[Path, str]]:
    directory, limit_file = _cgroup_dir(f"ambientmesh-test-{secrets.token_hex(3)}")
    directory.mkdir()
    try:
        yield directory, limit_file
    finally:
        directory.rmdir()  # empty again: its only process has exited


def test_a_process_in_a_limited_cgroup_passes_every_stage_before_the_limit(
    cgroup: tuple[Path, str],
) -> None:
    directory, limit_file = cgroup
    (directory / limit_file).write_text(str(LIMIT))
    procs = directory / "cgroup.procs"

    def join_cgroup() -> None:  # before exec: every byte the child allocates is charged
        procs.write_text(str(os.getpid()))

    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        preexec_fn=join_cgroup,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr  # not OOM-killed (that would be -9)
    report = json.loads(result.stdout)
    assert report["limit"] == LIMIT
    assert report["stages"] == ["NORMAL", "CLOSE_IDLE", "REFUSE_NEW", "RESET_HEAVIEST"]
