"""Fixtures for the netns tier: clusters that are always taken down, and checked to be gone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localcluster import teardown
from tests.support import ambientctl, leftovers


@pytest.fixture
def make_cluster(state_dir: Path) -> Iterator[Callable[[str, int], str]]:
    made: list[str] = []

    def make(name: str, nodes: int) -> str:
        made.append(name)
        ambientctl(name, "up", "--nodes", str(nodes))
        return name

    yield make
    for name in made:
        teardown.down(name)
        assert leftovers(name) == []


@pytest.fixture
def cluster(make_cluster: Callable[[str, int], str], cluster_name: str) -> str:
    return make_cluster(cluster_name, 2)
