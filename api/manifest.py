"""Reading manifests: YAML text (one or many documents, or a `kind: List`) into validated objects.

Everything in a manifest is validated before anything is returned, so callers can apply all of it
or none of it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import yaml

from api.errors import ManifestError
from api.objects import Obj, ref_of, validate

# libyaml's parser is ~10x faster; fall back to the pure one where it is missing.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Base):  # type: ignore[valid-type,misc]
    """Safe loading that rejects duplicate keys (PyYAML keeps the last; kubectl refuses)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # `{[a]: 1}`: a list as a key
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _documents(text: str, source: str) -> list[Any]:
    try:
        return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{source}{where}: invalid YAML: {problem}") from None


def _flatten(docs: list[Any], source: str) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            raise ManifestError(f"{source}: document {i + 1} is not a mapping")
        if doc.get("kind") == "List":
            items = doc.get("items")
            if not isinstance(items, list):
                raise ManifestError(f"{source}: document {i + 1}: List.items must be a list")
            out.extend(_flatten(items, source))
        else:
            out.append(doc)
    return out


def load_manifest(text: str, source: str = "<stdin>") -> list[Obj]:
    """Parse and validate every object; raise ManifestError/ObjectError on the first problem."""
    objects = [validate(doc) for doc in _flatten(_documents(text, source), source)]
    seen = set()
    for obj in objects:
        ref = ref_of(obj)
        if ref in seen:
            raise ManifestError(f"{source}: {ref} appears twice")
        seen.add(ref)
    if not objects:
        raise ManifestError(f"{source}: no objects")
    return objects
