"""Rendering for `get` and `status`: kubectl-shaped tables, and Kubernetes list JSON/YAML."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import yaml
from cryptography import x509

from localcluster.topology import NodePlan

_PHASES = {"Running": "Running", "Completed": "Succeeded", "Error": "Failed"}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def node_object(plan: NodePlan, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": plan.name, "labels": {"kubernetes.io/hostname": plan.name}},
        "spec": {"podCIDR": plan.pod_cidr, "podCIDRs": [plan.pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": plan.node_ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod_with_observed_status(pod: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The stored pod plus what is running, in Kubernetes' status shape."""
    status = dict(pod.get("status", {}))
    status["phase"] = _PHASES.get(row["status"], "Pending")
    status["containerStatuses"] = [
        {"name": c["name"], "ready": row["status"] == "Running", "restartCount": row["restarts"]}
        for c in pod["spec"]["containers"]
    ]
    return {**pod, "status": status}


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False).rstrip()


def describe_cert(pem: str) -> dict[str, str]:
    """Serial, validity and the name a human recognizes (SAN URI, else the subject)."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {
        "serial": f"{cert.serial_number:x}",
        "notBefore": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notAfter": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "name": ", ".join(names) or cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
    }
