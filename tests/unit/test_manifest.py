"""Manifest reading: YAML errors carry a position; all-or-nothing validation."""

from __future__ import annotations

import pytest

from api import ManifestError, ObjectError, load_manifest

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


def test_multi_document_and_list() -> None:
    text = (
        NS
        + "---\n"
        + (
            "apiVersion: v1\nkind: List\nitems:\n"
            "- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
            "- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n"
        )
        + "---\n"
    )
    assert [o["metadata"]["name"] for o in load_manifest(text)] == ["shop", "a", "b"]


def test_invalid_yaml_has_line_and_column() -> None:
    with pytest.raises(ManifestError, match=r"^f.yaml:4:\d+: invalid YAML: "):
        load_manifest(NS + "  bad: indent\n", "f.yaml")


def test_duplicate_key_is_an_error_not_last_wins() -> None:
    with pytest.raises(ManifestError, match=r"^f.yaml:4:1: invalid YAML: duplicate key 'kind'"):
        load_manifest(NS + "kind: Pod\n", "f.yaml")


@pytest.mark.parametrize("text", ["just a string", "- a\n- b\n"])
def test_non_mapping_document(text: str) -> None:
    with pytest.raises(ManifestError, match="not a mapping"):
        load_manifest(text, "f.yaml")


def test_duplicate_object_in_one_file() -> None:
    with pytest.raises(ManifestError, match=r'Namespace "shop" appears twice'):
        load_manifest(NS + "---\n" + NS)


def test_empty_manifest() -> None:
    with pytest.raises(ManifestError, match="no objects"):
        load_manifest("---\n# nothing\n")


def test_one_bad_object_rejects_the_file() -> None:
    with pytest.raises(ObjectError, match='Namespace "Bad"'):
        load_manifest(NS + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n")
