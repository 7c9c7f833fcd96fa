"""Who is asking, and may they have this identity? (pure, table-tested)

Authentication (local mode): each node has a bootstrap token, written 0600 by `ambientctl up`;
callers send it as `Authorization: Bearer <token>`. Tokens are compared by SHA-256 digest in
constant time. (Kubernetes mode checks a ServiceAccount token with TokenReview instead.)
Authorization, as Istio's CA enforces for ztunnel: a node may obtain certificates only for the
identities of pods scheduled on that node.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Protocol

from api.objects import Obj
from api.spiffe import SpiffeId
from controller.ca.refusal import Reason, Refusal


class Authenticator(Protocol):
    """Which node a bearer token speaks for. `review` may do I/O (TokenReview) and must be
    awaited before the synchronous `authenticate` (which raises Refusal) can succeed."""

    async def review(self, authorization: str | None) -> None: ...

    def authenticate(self, authorization: str | None) -> str: ...


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class NodeTokens:
    """Token digests of every node; answers which node a bearer token belongs to."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._digests = {node: digest(token) for node, token in tokens.items()}

    async def review(self, authorization: str | None) -> None:
        """Nothing to ask anyone: the tokens are local (the `Authenticator` interface)."""

    def authenticate(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refusal(Reason.UNAUTHENTICATED, "missing bearer token")
        presented = digest(token.strip())
        found = None
        for node, expected in self._digests.items():  # no early exit: time does not leak a match
            if hmac.compare_digest(presented, expected):
                found = node
        if found is None:
            raise Refusal(Reason.UNAUTHENTICATED, "unknown token")
        return found


def authorize(pods: Iterable[Obj], node: str, identity: SpiffeId) -> None:
    """Allow only identities of pods on `node` (namespace + service account match)."""
    for pod in pods:
        meta, spec = pod["metadata"], pod["spec"]
        if (
            spec.get("nodeName") == node
            and meta["namespace"] == identity.namespace
            and spec.get("serviceAccountName", "default") == identity.service_account
        ):
            return
    raise Refusal(Reason.NODE_NOT_AUTHORIZED, f"no pod on node {node} runs as {identity}")
