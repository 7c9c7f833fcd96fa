"""What an Istio object is enforced as when the Kubernetes API let it in but Istio's validation
refuses it (no webhook installed, or a webhook older than the object). Pure, table-tested.

`ambientctl apply` refuses such objects; the Kubernetes API may not. Its content cannot be
trusted, and dropping it would open what it was written to close (an invalid DENY, or the only
ALLOW of a workload), so each is replaced by a stand-in that fails closed, scoped to what the
object selects when its selection itself is valid, else to its whole namespace:
- ALLOW: allows nothing (Istio skips a policy's invalid rules, which is the same "allow less");
- DENY, CUSTOM, or an unknown action: denies everything (Istio would skip the invalid rules of
  a DENY, allowing what they meant to deny; we do not);
- AUDIT: audits nothing (it never changes a verdict);
- PeerAuthentication: STRICT.
The reason travels with the stand-in, so a refused connection's access log, the controller's
status and its metrics name the object and what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.meshconfig import MAX_REASON
from api.schema import Problem, summary

_SELECTION = ("selector", "targetRef", "targetRefs")


def reason(problems: Sequence[Problem]) -> str:
    """One line: the first problem, and how many more there are."""
    line = summary(problems)
    text = f"{line.field}: {line.reason}"
    # A 320-character service account, quoted, and more: cut to what a resource may carry.
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _selection(spec: Any, problems: Sequence[Problem], allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        return {}
    bad = any(
        p.field in ("spec", "<root>") or p.field.startswith(tuple(f"spec.{k}" for k in _SELECTION))
        for p in problems
    )
    return {} if bad else {k: spec[k] for k in allowed if k in spec}


def policy_stand_in(spec: Any, problems: Sequence[Problem]) -> dict[str, Any]:
    """The spec an invalid AuthorizationPolicy is enforced as."""
    selection = _selection(spec, problems, _SELECTION)
    action = spec.get("action", "ALLOW") if isinstance(spec, Mapping) else "DENY"
    if action in ("ALLOW", "AUDIT"):
        return {**selection, "action": action}
    return {**selection, "action": "DENY", "rules": [{}]}


def peer_authentication_stand_in(spec: Any, problems: Sequence[Problem]) -> dict[str, Any]:
    """The spec an invalid PeerAuthentication is enforced as."""
    return {**_selection(spec, problems, ("selector",)), "mtls": {"mode": "STRICT"}}
