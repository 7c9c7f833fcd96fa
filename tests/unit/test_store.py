"""The on-disk store: whole revisions, a clear error for a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from api import validate
from localcluster.store import (
    ClusterInfo,
    ClusterStore,
    FileStore,
    ObjectSet,
    StoreError,
    StoreWatcher,
)


def _ns(name: str) -> dict[str, object]:
    return validate({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def test_roundtrip_and_one_revision_per_commit(tmp_path: Path) -> None:
    store = ClusterStore("c", tmp_path)
    store.create(ClusterInfo("c", 2))
    objects = store.read()
    objects.put(_ns("a"))
    objects.put(_ns("b"))
    store.commit(objects)
    again = store.read()
    assert again.revision == 1
    assert [o["metadata"]["name"] for o in again.list("Namespace")] == ["a", "b"]
    assert store.info() == ClusterInfo("c", 2)
    assert oct(store.objects_path.stat().st_mode & 0o777) == "0o600"


def test_missing_cluster_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cluster 'nope' does not exist \(run: ambientctl up"):
        ClusterStore("nope", tmp_path).read()


def test_corrupt_file_is_reported_not_reset(tmp_path: Path) -> None:
    store = ClusterStore("c", tmp_path)
    store.create(ClusterInfo("c", 1))
    store.objects_path.write_text("items: [unclosed")
    with pytest.raises(StoreError, match="is corrupt"):
        store.read()
    assert store.objects_path.read_text() == "items: [unclosed"


def test_copy_is_independent() -> None:
    original = ObjectSet({}, 0)
    original.put(_ns("a"))
    clone = original.copy()
    clone.put(_ns("b"))
    assert len(original.list("Namespace")) == 1


def test_static_config_file_is_watched_and_a_bad_edit_keeps_the_last_good_state(
    tmp_path: Path,
) -> None:
    """ztunnel's dev mode reads a Kubernetes List from any file; a broken edit is counted and the
    previous good revision keeps serving (fail safe, not fail empty)."""
    path = tmp_path / "config.yaml"
    good = ObjectSet({}, 0)
    good.put(_ns("a"))
    ClusterStore("c", tmp_path).create(ClusterInfo("c", 1))
    path.write_text(yaml.safe_dump(good.as_list()))
    watcher = StoreWatcher(FileStore("c", path))
    assert watcher.poll()
    assert [o["metadata"]["name"] for o in watcher.current.list("Namespace")] == ["a"]
    path.write_text("items: [broken")
    assert not watcher.poll()
    assert watcher.errors == 1
    assert "is corrupt" in watcher.last_error
    assert [o["metadata"]["name"] for o in watcher.current.list("Namespace")] == ["a"]
