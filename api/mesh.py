"""Istio's MeshConfig: the mesh-wide settings users put in ConfigMap `istio` of `istio-system`,
key `mesh` (a YAML document), as for istiod. Pure; read by the object validation (`ambientctl
apply` refuses a bad one with the field's path), the controller (which streams the settings to
every proxy as the `meshconfig` resource) and the proxies.

Fields this mesh acts on are checked; the others of Istio's MeshConfig are kept and ignored, so a
ConfigMap written for Istio applies unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from api.ambient import ROOT_NAMESPACE


class Normalization(enum.Enum):
    """`pathNormalization.normalization` (what each does: `ztunnel.waypoint.paths`)."""

    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


DEFAULT_NORMALIZATION = Normalization.BASE  # Istio's default install

CONFIGMAP = "istio"  # istiod's `--meshConfig` ConfigMap, in its root namespace
CONFIGMAP_KEY = "mesh"
NORMALIZATIONS = tuple(n.value for n in Normalization)


class MeshConfigError(ValueError):
    """What is wrong with a MeshConfig: `field` is its path inside the `mesh` document."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class MeshSettings:
    path_normalization: Normalization = DEFAULT_NORMALIZATION


DEFAULTS = MeshSettings()


def is_mesh_configmap(namespace: str, name: str) -> bool:
    return (namespace, name) == (ROOT_NAMESPACE, CONFIGMAP)


def load(document: object) -> dict[str, Any]:
    """The `mesh` key's YAML as a mapping (empty: every default)."""
    if not isinstance(document, str):
        raise MeshConfigError(CONFIGMAP_KEY, "must be a string holding a YAML document")
    try:
        loaded = yaml.safe_load(document)
    except yaml.YAMLError as exc:
        raise MeshConfigError(CONFIGMAP_KEY, f"not YAML: {str(exc).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise MeshConfigError(CONFIGMAP_KEY, "must be a YAML mapping (MeshConfig)")
    return loaded


def settings(mesh: Mapping[str, Any]) -> MeshSettings:
    """The settings of a MeshConfig mapping, or MeshConfigError naming the field."""
    return MeshSettings(path_normalization=_normalization(mesh.get("pathNormalization")))


def _normalization(value: object) -> Normalization:
    if value is None:
        return DEFAULT_NORMALIZATION
    if not isinstance(value, Mapping):
        raise MeshConfigError("pathNormalization", "must be a mapping")
    mode = value.get("normalization", "DEFAULT")
    if mode == "DEFAULT":  # Istio's enum has DEFAULT, which means BASE
        return DEFAULT_NORMALIZATION
    if mode not in NORMALIZATIONS:
        raise MeshConfigError(
            "pathNormalization.normalization",
            f"must be one of DEFAULT, {', '.join(NORMALIZATIONS)}; got {mode!r}",
        )
    return Normalization(mode)
