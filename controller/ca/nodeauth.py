"""Who is asking, and may they have this identity? (pure, table-tested)

Two kinds of caller, as Istio's CA has them:
- a node (its ztunnel): may obtain certificates only for the identities of pods scheduled on that
  node. Local mode: each node has a bootstrap token, written 0600 by `ambientctl up`.
- a pod (a waypoint, which runs its own mTLS): may obtain only its own ServiceAccount's identity.
  Local mode: the cluster writes the pod a token bound to its uid (`<uid>.<HMAC-SHA256(key,
  uid)>`, the key 0600 in the state directory), as a projected ServiceAccount token is bound to
  its pod. A pod token stops working when its pod is gone.
Callers send the token as `Authorization: Bearer <token>`; digests are compared in constant time.
(Kubernetes mode reviews ServiceAccount tokens with TokenReview instead.)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from api.objects import Obj
from api.spiffe import SpiffeId
from controller.ca.refusal import Reason, Refusal


@dataclass(frozen=True)
class Caller:
    """Exactly one of: the node a ztunnel speaks for, or the uid of the pod asking for itself."""

    node: str = ""
    pod_uid: str = ""


class Authenticator(Protocol):
    """Who a bearer token speaks for. `review` may do I/O (TokenReview) and must be awaited
    before the synchronous `authenticate` (which raises Refusal) can succeed."""

    async def review(self, authorization: str | None) -> None: ...

    def authenticate(self, authorization: str | None) -> Caller: ...


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refusal(Reason.UNAUTHENTICATED, "missing bearer token")
    return token.strip()


def pod_token(key: bytes, uid: str) -> str:
    """The local cluster's token for pod `uid`."""
    return f"{uid}.{hmac.new(key, uid.encode(), hashlib.sha256).hexdigest()}"


class NodeTokens:
    """Token digests of every node; answers which node a bearer token belongs to."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._digests = {node: digest(token) for node, token in tokens.items()}

    async def review(self, authorization: str | None) -> None:
        """Nothing to ask anyone: the tokens are local (the `Authenticator` interface)."""

    def authenticate(self, authorization: str | None) -> Caller:
        presented = digest(bearer(authorization))
        found = None
        for node, expected in self._digests.items():  # no early exit: time does not leak a match
            if hmac.compare_digest(presented, expected):
                found = node
        if found is None:
            raise Refusal(Reason.UNAUTHENTICATED, "unknown token")
        return Caller(node=found)


class LocalTokens(NodeTokens):
    """Node bootstrap tokens, and pod tokens signed with the cluster's key (`pod_token`)."""

    def __init__(self, tokens: Mapping[str, str], pod_key: bytes | None) -> None:
        super().__init__(tokens)
        self.pod_key = pod_key

    def authenticate(self, authorization: str | None) -> Caller:
        token = bearer(authorization)
        uid, dot, _ = token.partition(".")
        if dot and self.pod_key is not None:
            if hmac.compare_digest(token.encode(), pod_token(self.pod_key, uid).encode()):
                return Caller(pod_uid=uid)
            raise Refusal(Reason.UNAUTHENTICATED, "unknown token")
        return super().authenticate(authorization)


def _runs_as(pod: Obj, identity: SpiffeId) -> bool:
    return bool(
        pod["metadata"]["namespace"] == identity.namespace
        and pod["spec"].get("serviceAccountName", "default") == identity.service_account
    )


def authorize(pods: Iterable[Obj], caller: Caller, identity: SpiffeId) -> None:
    """A node: identities of pods on it. A pod: its own identity, while it exists."""
    if caller.pod_uid:
        pod = next((p for p in pods if p["metadata"].get("uid") == caller.pod_uid), None)
        if pod is None:
            raise Refusal(Reason.NODE_NOT_AUTHORIZED, f"pod {caller.pod_uid} does not exist")
        if not _runs_as(pod, identity):
            name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            raise Refusal(Reason.NODE_NOT_AUTHORIZED, f"pod {name} does not run as {identity}")
        return
    if any(p["spec"].get("nodeName") == caller.node and _runs_as(p, identity) for p in pods):
        return
    raise Refusal(Reason.NODE_NOT_AUTHORIZED, f"no pod on node {caller.node} runs as {identity}")
