"""Kubernetes-mode authentication: who a projected ServiceAccount token (audience `ambientmesh`)
speaks for, asked of the API server (TokenReview).

- The `ztunnel` ServiceAccount of the mesh's namespace speaks for a node, taken from the token's
  pod binding (`authentication.kubernetes.io/node-name`, Kubernetes ≥ 1.30) — Istio's CA
  authorizes ztunnel CSRs the same way.
- Any other pod-bound token speaks for its pod (`.../pod-uid`): a waypoint asking for its own
  identity.
Reviews are cached for 60 s by token digest (a token is valid far longer), so a burst of CSRs
costs one review.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from controller.ca.nodeauth import Caller, bearer, digest
from controller.ca.refusal import Reason, Refusal

log = logging.getLogger("controller.tokenreview")

AUDIENCE = "ambientmesh"
NODE_NAME = "authentication.kubernetes.io/node-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
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
        self._cache: dict[bytes, tuple[Caller, float]] = {}

    async def review(self, authorization: str | None) -> None:
        """Ask the API server about a token not reviewed recently; `authenticate` answers."""
        try:
            token = bearer(authorization)
        except Refusal:
            return
        if self._cached(digest(token)) is not None:
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
        caller = self._caller_of(reply.get("status") or {})
        if caller is not None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[digest(token)] = (caller, self.clock() + CACHE_S)

    def _caller_of(self, status: dict[str, Any]) -> Caller | None:
        user = status.get("user") or {}
        if not status.get("authenticated"):
            return None
        if AUDIENCE not in (status.get("audiences") or [AUDIENCE]):
            return None
        ztunnel = user.get("username") == self.username
        bound = (user.get("extra") or {}).get(NODE_NAME if ztunnel else POD_UID) or []
        if len(bound) != 1:
            return None
        return Caller(node=str(bound[0])) if ztunnel else Caller(pod_uid=str(bound[0]))

    def _cached(self, key: bytes) -> Caller | None:
        entry = self._cache.get(key)
        if entry is None or entry[1] < self.clock():
            return None
        return entry[0]

    def authenticate(self, authorization: str | None) -> Caller:
        caller = self._cached(digest(bearer(authorization)))
        if caller is None:
            raise Refusal(Reason.UNAUTHENTICATED, "token not accepted by TokenReview")
        return caller
