"""Kubernetes-mode authentication: which node a ztunnel's ServiceAccount token speaks for.

The ztunnel DaemonSet mounts a projected token (audience `ambientmesh`); the controller asks the
API server to review it (TokenReview) and takes the node from the token's pod binding
(`authentication.kubernetes.io/node-name`, Kubernetes ≥ 1.30) — Istio's CA authorizes ztunnel
CSRs the same way. Only the `ztunnel` ServiceAccount of the mesh's namespace is accepted.
Reviews are cached for 60 s by token digest (a token is valid far longer), so a burst of CSRs
costs one review.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from controller.ca.nodeauth import digest
from controller.ca.refusal import Reason, Refusal

log = logging.getLogger("controller.tokenreview")

AUDIENCE = "ambientmesh"
NODE_NAME = "authentication.kubernetes.io/node-name"
CACHE_S = 60.0
MAX_CACHED = 10_000  # one per node-token; bounded against a flood of distinct junk tokens


class TokenReviewer:
    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        serviceaccount: str = "ztunnel",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.username = f"system:serviceaccount:{namespace}:{serviceaccount}"
        self.clock = clock
        self._cache: dict[bytes, tuple[str, float]] = {}

    async def review(self, authorization: str | None) -> None:
        """Ask the API server about a token not reviewed recently; `authenticate` answers."""
        token = _bearer(authorization)
        if token is None or self._cached(digest(token)) is not None:
            return
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]},
        }
        try:
            resp = await self.api.call_api(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "POST",
                body=body,
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=10,
            )
            async with resp:
                reply: dict[str, Any] = await resp.json(content_type=None)
        except Exception as exc:
            log.warning("TokenReview failed: %s", exc)
            return
        node = self._node_of(reply.get("status") or {})
        if node is not None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[digest(token)] = (node, self.clock() + CACHE_S)

    def _node_of(self, status: dict[str, Any]) -> str | None:
        user = status.get("user") or {}
        if not status.get("authenticated") or user.get("username") != self.username:
            return None
        if AUDIENCE not in (status.get("audiences") or [AUDIENCE]):
            return None
        nodes = (user.get("extra") or {}).get(NODE_NAME) or []
        return str(nodes[0]) if len(nodes) == 1 else None

    def _cached(self, key: bytes) -> str | None:
        entry = self._cache.get(key)
        if entry is None or entry[1] < self.clock():
            return None
        return entry[0]

    def authenticate(self, authorization: str | None) -> str:
        token = _bearer(authorization)
        if token is None:
            raise Refusal(Reason.UNAUTHENTICATED, "missing bearer token")
        node = self._cached(digest(token))
        if node is None:
            raise Refusal(Reason.UNAUTHENTICATED, "token not accepted by TokenReview")
        return node


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
