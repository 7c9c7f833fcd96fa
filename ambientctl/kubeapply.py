"""Server-side apply and delete of rendered manifests through kubernetes_asyncio (the Kubernetes
side of `ambientctl install` / `uninstall`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient

from ambientctl.install import FIELD_MANAGER, InstallError, Obj

log = logging.getLogger("ambientctl.kube")

# kind → (API prefix, plural, namespaced): every kind the manifests contain.
KINDS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "CustomResourceDefinition": (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "Gateway": ("/apis/gateway.networking.k8s.io/v1", "gateways", True),
}
ROLLOUT_TIMEOUT_S = 300.0


def object_path(obj: Obj) -> str:
    try:
        prefix, plural, namespaced = KINDS[obj["kind"]]
    except KeyError:
        raise InstallError(f"cannot apply kind {obj['kind']!r}") from None
    meta = obj["metadata"]
    where = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{prefix}{where}/{plural}/{meta['name']}"


def _name(obj: Obj) -> str:
    return f"{obj['kind'].lower()}/{obj['metadata']['name']}"


async def _call(api: ApiClient, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    resp = await api.call_api(
        path,
        method,
        header_params={"Accept": "application/json", **kw.pop("headers", {})},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=30,
        **kw,
    )
    async with resp:
        return resp.status, await resp.json(content_type=None)


async def apply(api: ApiClient, objects: list[Obj]) -> list[str]:
    """Server-side apply, in order; what was applied (`kind/name`)."""
    done = []
    for obj in objects:
        status, body = await _call(
            api,
            "PATCH",
            object_path(obj),
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            headers={"Content-Type": "application/apply-patch+yaml"},
            body=obj,
        )
        if status >= 300:
            raise InstallError(f"{_name(obj)}: {status} {body.get('message', '')}")
        done.append(_name(obj))
    return done


async def delete(api: ApiClient, objects: list[Obj]) -> list[str]:
    """Delete in reverse order (what was applied last goes first); absent objects are fine."""
    done = []
    for obj in reversed(objects):
        status, body = await _call(api, "DELETE", object_path(obj))
        if status >= 300 and status != 404:
            raise InstallError(f"{_name(obj)}: {status} {body.get('message', '')}")
        done.append(_name(obj))
    return done


async def wait_rolled_out(
    api: ApiClient, daemonset: Obj, timeout_s: float = ROLLOUT_TIMEOUT_S
) -> None:
    """Until every node runs the DaemonSet's current template and is ready."""
    path = object_path(daemonset)
    async with asyncio.timeout(timeout_s):
        while True:
            code, ds = await _call(api, "GET", path)
            status, meta = ds.get("status") or {}, ds.get("metadata") or {}
            want = status.get("desiredNumberScheduled", -1)
            if (
                code == 200
                and status.get("observedGeneration", 0) >= meta.get("generation", 1)
                and status.get("updatedNumberScheduled") == want
                and status.get("numberReady") == want
            ):
                return
            await asyncio.sleep(2)
