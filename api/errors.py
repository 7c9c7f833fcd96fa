"""Errors that name what is wrong: the object, the field, and why, on one line."""

from __future__ import annotations


class ObjectError(ValueError):
    """An object is invalid, or conflicts with the cluster. The user is to blame, not us."""

    def __init__(self, ref: str, field: str, reason: str) -> None:
        super().__init__(f"{ref}: {field}: {reason}" if field else f"{ref}: {reason}")
        self.ref = ref
        self.field = field
        self.reason = reason


class ManifestError(ValueError):
    """A manifest cannot be read as objects at all (not YAML, not a mapping, no kind)."""
