"""Kubernetes-mode authentication of ztunnels by TokenReview, against the fake API server."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from controller.ca.nodeauth import Caller
from controller.ca.refusal import Refusal
from controller.ca.tokenreview import NODE_NAME, POD_UID, TokenReviewer
from tests.fakekube import FakeKube, serving

ZTUNNEL = "system:serviceaccount:ambientmesh-system:ztunnel"


def review(tokens: Mapping[str, Mapping[str, object]], presented: str) -> tuple[str | None, int]:
    """(node or None, TokenReview requests made) for two uses of one token."""

    async def main() -> tuple[str | None, int]:
        fake = FakeKube(reviews={k: dict(v) for k, v in tokens.items()})
        async with serving(fake) as api:
            now = [0.0]
            reviewer = TokenReviewer(api, "ambientmesh-system", clock=lambda: now[0])
            node = None
            for _ in range(2):
                await reviewer.review(f"Bearer {presented}")
                try:
                    node = reviewer.authenticate(f"Bearer {presented}").node or None
                except Refusal:
                    node = None
            return node, sum(1 for r in fake.requests if r["path"].endswith("tokenreviews"))

    return asyncio.run(main())


def test_a_ztunnel_token_speaks_for_its_pods_node_and_is_cached() -> None:
    tokens = {"t1": {"username": ZTUNNEL, "extra": {NODE_NAME: ["node-a"]}}}
    assert review(tokens, "t1") == ("node-a", 1)


def test_another_accounts_pod_bound_token_speaks_for_its_pod_only() -> None:
    async def main() -> Caller:
        user = {"username": "system:serviceaccount:demo:waypoint", "extra": {POD_UID: ["u1"]}}
        async with serving(FakeKube(reviews={"t": user})) as api:
            reviewer = TokenReviewer(api, "ambientmesh-system")
            await reviewer.review("Bearer t")
            return reviewer.authenticate("Bearer t")

    assert asyncio.run(main()) == Caller(pod_uid="u1")


@pytest.mark.parametrize(
    "user",
    [
        {"username": "system:serviceaccount:default:ztunnel", "extra": {NODE_NAME: ["n"]}},
        {"username": ZTUNNEL},  # no node binding (not a pod-bound token)
        {"username": ZTUNNEL, "extra": {NODE_NAME: ["n1", "n2"]}},
    ],
)
def test_other_accounts_and_unbound_tokens_are_refused(user: dict[str, object]) -> None:
    node, reviews = review({"t": user}, "t")
    assert node is None
    assert reviews == 2, "a refused token must not be cached as good"


def test_unknown_token_is_refused() -> None:
    assert review({}, "junk")[0] is None


def test_missing_token_never_reaches_the_api() -> None:
    async def main() -> None:
        fake = FakeKube()
        async with serving(fake) as api:
            reviewer = TokenReviewer(api, "ambientmesh-system")
            await reviewer.review(None)
            with pytest.raises(Refusal, match="missing bearer token"):
                reviewer.authenticate(None)
            assert fake.requests == []

    asyncio.run(main())
