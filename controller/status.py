"""Writes Istio's AuthorizationPolicy conditions (controller/config/conditions.py) into the
objects' status on Kubernetes, after each compile, for the objects whose conditions changed.

A write makes the API server send the object back (MODIFIED); the next compile finds its
conditions already right and writes nothing, so the loop settles (an object still at the
version it had when we wrote it is skipped: its echo is on the way). A failed write is counted and
logged once per object and reason, and tried again at the next revision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from kubernetes_asyncio.client import ApiException
from prometheus_client import CollectorRegistry, Counter

from controller.config import conditions
from controller.config.compile import Mesh
from localcluster.store import ObjectSet
from sources.kube import AUTHORIZATION_POLICIES, KubeSource

log = logging.getLogger("controller.status")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    def __init__(
        self, source: KubeSource, registry: CollectorRegistry, now: Callable[[], str] = _now
    ) -> None:
        self.source = source
        self.now = now
        self.writes = Counter(
            "ambientmesh_controller_status_writes",
            "Status conditions written to AuthorizationPolicies, by result (ok, error)",
            ["result"],
            registry=registry,
        )
        self._failed: dict[tuple[str, str], str] = {}
        # The resourceVersion an object had when we wrote its status: until the write's echo
        # (a newer version) comes back, the object we hold is older than our write.
        self._written: dict[tuple[str, str], str] = {}

    async def write(self, objects: ObjectSet, mesh: Mesh) -> None:
        policies = objects.list("AuthorizationPolicy")
        present = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in policies}
        for gone in [k for k in (*self._written, *self._failed) if k not in present]:
            self._written.pop(gone, None)
            self._failed.pop(gone, None)
        for obj in policies:
            meta = obj["metadata"]
            ns, name = meta["namespace"], meta["name"]
            if self._written.get((ns, name)) == meta.get("resourceVersion"):
                continue
            res = mesh.resources.get(f"policy/{ns}/{name}")
            if res is None or (wanted := conditions.wanted(obj, res, self.now())) is None:
                continue
            try:
                code, message = await self.source.patch_status(
                    AUTHORIZATION_POLICIES, ns, name, {"conditions": wanted}
                )
            except (aiohttp.ClientError, ApiException, OSError, TimeoutError) as exc:
                code, message = 0, str(exc)
            if 200 <= code < 300:
                self.writes.labels(result="ok").inc()
                self._failed.pop((ns, name), None)
                self._written[(ns, name)] = meta.get("resourceVersion", "")
                continue
            self.writes.labels(result="error").inc()
            reason = f"{code} {message}".strip()
            if self._failed.get((ns, name)) != reason:
                log.warning("status of AuthorizationPolicy %s/%s not written: %s", ns, name, reason)
            self._failed[(ns, name)] = reason
