"""Istio ambient's user-facing labels, and who is enrolled (pure).

Same semantics as Istio: a namespace label `istio.io/dataplane-mode=ambient` enrolls its pods; a pod
label overrides it (`none` opts the pod out, `ambient` opts it in).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DATAPLANE_MODE = "istio.io/dataplane-mode"
MODE_AMBIENT = "ambient"
MODE_NONE = "none"
USE_WAYPOINT = "istio.io/use-waypoint"
ROOT_NAMESPACE = "istio-system"  # Istio's default root namespace: its policies apply mesh-wide
WAYPOINT_CLASS = "istio-waypoint"  # a Gateway of this class is a waypoint
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"  # on a waypoint's pods: its Gateway


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    if not obj:
        return {}
    return obj.get("metadata", {}).get("labels") or {}


def enrolled(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> bool:
    """Whether the pod's traffic belongs in the mesh."""
    mode = _labels(pod).get(DATAPLANE_MODE)
    if mode is not None:
        return mode == MODE_AMBIENT
    return _labels(namespace).get(DATAPLANE_MODE) == MODE_AMBIENT


def waypoint_of(pod: Mapping[str, Any]) -> str | None:
    """The Gateway a waypoint pod serves (Istio labels a waypoint's pods so), else None."""
    return _labels(pod).get(GATEWAY_NAME)


def use_waypoint(*objects: Mapping[str, Any] | None) -> str:
    """The waypoint named by the first of `objects` (pod, then namespace) that names one."""
    return next((w for o in objects if (w := _labels(o).get(USE_WAYPOINT))), "")
