"""The status conditions Istio writes on an AuthorizationPolicy, from what the controller made
of it (pure). On Kubernetes the controller patches them into the object's status subresource,
so `kubectl get authorizationpolicy -o yaml` says whether and why a policy is in force:

- `ZtunnelAccepted` (a `selector` or namespace-wide policy) or `WaypointAccepted` (one bound
  with `targetRefs`), as Istio 1.24+ names them;
- status "True", reason "Accepted": in force; "False", reason "UnsupportedValue": CUSTOM at the
  ztunnel (skipped there, as Istio's); "False", reason "Invalid": Istio's validation refuses it
  and a fail-closed stand-in is enforced in its place (controller/config/invalid.py), with the
  reason as the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.meshconfig import Resource

ZTUNNEL, WAYPOINT = "ZtunnelAccepted", "WaypointAccepted"


def _condition(obj: Mapping[str, Any], res: Resource) -> dict[str, Any]:
    raw = obj.get("spec")
    spec: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    bound = bool(spec.get("targetRefs") or spec.get("targetRef"))
    kind = WAYPOINT if bound else ZTUNNEL
    if res.get("invalid"):
        status, reason, message = "False", "Invalid", str(res["invalid"])
    elif not bound and spec.get("action") == "CUSTOM":
        status, reason = "False", "UnsupportedValue"
        message = "ztunnel does not support the CUSTOM action"
    else:
        status, reason = "True", "Accepted"
        message = "bound to its waypoint" if bound else "attached to ztunnel"
    condition = {"type": kind, "status": status, "reason": reason, "message": message}
    if (generation := obj["metadata"].get("generation")) is not None:
        condition["observedGeneration"] = generation
    return condition


def wanted(obj: Mapping[str, Any], res: Resource, now: str) -> list[dict[str, Any]] | None:
    """The object's new `status.conditions`, or None when its current ones already say it.
    A condition keeps its lastTransitionTime while its status stays the same."""
    condition = _condition(obj, res)
    current = [
        c for c in ((obj.get("status") or {}).get("conditions") or []) if isinstance(c, Mapping)
    ]
    same = next((c for c in current if c.get("type") == condition["type"]), None)
    keep = {k: v for k, v in (same or {}).items() if k != "lastTransitionTime"}
    if same is not None and keep == condition and len(current) == 1:
        return None
    if same is None or same.get("status") != condition["status"]:
        condition["lastTransitionTime"] = now
    else:
        condition["lastTransitionTime"] = same.get("lastTransitionTime", now)
    return [condition]
