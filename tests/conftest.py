"""Test tiers and their guards.

tests/unit needs nothing. tests/netns and tests/e2e need root and the kernel: there, a missing
requirement skips with the reason outside CI, and FAILS when CI=true (never a silent skip).
Every cluster a test makes is named `tst<random>` (localcluster.naming.TEST_CLUSTER_PREFIX) and
lives in a temporary state directory, so runs never collide and `make test` can remove a crashed
run's leftovers.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

from localcluster import naming
from tests.ci import in_ci

ROOT_TIERS = ("netns", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).parent.name in ROOT_TIERS:
            item.add_marker(pytest.mark.root)


def missing_root_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (run scripts/bootstrap)"
    if not Path("/proc/self/ns/net").exists():
        return "needs network namespace support in the kernel"
    return None


@pytest.fixture(autouse=True)
def _root_guard(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") is None:
        return
    problem = missing_root_requirement()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"CI=true: {problem}")
    pytest.skip(problem)


@pytest.fixture
def cluster_name() -> str:
    return f"{naming.TEST_CLUSTER_PREFIX}{secrets.token_hex(3)}"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv(naming.STATE_DIR_ENV, str(path))
    return path
