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
    # defaultConfig.gatewayTopology.numTrustedProxies: the X-Forwarded-For hops the waypoint
    # trusts for `remote.ip` and `remoteIpBlocks` (Envoy's xff_num_trusted_hops; 0: the peer).
    num_trusted_proxies: int = 0
    # extensionProviders' names: what an AuthorizationPolicy's CUSTOM `provider.name` may say.
    extension_providers: tuple[str, ...] = ()


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
    return MeshSettings(
        path_normalization=_normalization(mesh.get("pathNormalization")),
        num_trusted_proxies=_trusted_proxies(mesh.get("defaultConfig")),
        extension_providers=_providers(mesh.get("extensionProviders")),
    )


def _providers(value: object) -> tuple[str, ...]:
    """The names of `extensionProviders` (each one mapping with a unique `name`, as Istio's
    ValidateMeshConfig wants); what each provider is stays the waypoint's to read."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MeshConfigError("extensionProviders", "must be a list")
    out: list[str] = []
    for i, provider in enumerate(value):
        name = provider.get("name") if isinstance(provider, Mapping) else None
        if not isinstance(name, str) or not name:
            raise MeshConfigError(f"extensionProviders[{i}].name", "must be a non-empty string")
        if name in out:
            raise MeshConfigError(f"extensionProviders[{i}].name", f"duplicate name {name!r}")
        out.append(name)
    return tuple(out)


MAX_TRUSTED_PROXIES = 64  # more hops than any real chain; bounds the header walk


def _trusted_proxies(default_config: object) -> int:
    if default_config is None:
        return 0
    if not isinstance(default_config, Mapping):
        raise MeshConfigError("defaultConfig", "must be a mapping (ProxyConfig)")
    topology = default_config.get("gatewayTopology")
    if topology is None:
        return 0
    if not isinstance(topology, Mapping):
        raise MeshConfigError("defaultConfig.gatewayTopology", "must be a mapping")
    value = topology.get("numTrustedProxies", 0)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_TRUSTED_PROXIES
    ):
        raise MeshConfigError(
            "defaultConfig.gatewayTopology.numTrustedProxies",
            f"must be an integer 0-{MAX_TRUSTED_PROXIES}, got {value!r}",
        )
    return value


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
