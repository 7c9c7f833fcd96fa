"""Istio's AuthorizationPolicy conditions, written into the objects' status on Kubernetes: the
whole loop against the fake API server (list/watch → compile → status PATCH → MODIFIED →
nothing more to write), and the conditions table (controller/config/conditions.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller.config import conditions
from controller.config.server import ConfigMetrics, ConfigServer
from controller.status import StatusWriter
from sources import kube
from sources.base import Cache
from sources.kube import KubeSource, SourceMetrics
from tests.fakekube import FakeKube, serving
from tests.waiting import until

POLICIES = "/apis/security.istio.io/v1/authorizationpolicies"
NOW = "2026-12-07T12:00:00Z"


def ap(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "demo", "generation": 3},
        "spec": spec,
    }


GOOD = ap("good", rules=[{"from": [{"source": {"namespaces": ["demo"]}}]}])
BAD = ap("bad", rules=[{"to": [{"operation": {"ports": ["http"]}}]}])
CUSTOM = ap("ext", action="CUSTOM", provider={"name": "authz"}, rules=[{}])
BOUND = ap("l7", targetRefs=[{"kind": "Service", "name": "web"}], rules=[{}])


def _status(fake: FakeKube, name: str) -> list[dict[str, Any]]:
    obj = fake.objects[POLICIES][("demo", name)]
    return list((obj.get("status") or {}).get("conditions") or [])


def test_conditions_are_written_once_and_the_loop_settles() -> None:
    async def main() -> None:
        fake = FakeKube()
        for obj in (GOOD, BAD, CUSTOM, BOUND):
            await fake.put(POLICIES, obj)
        async with serving(fake) as api:
            registry = CollectorRegistry()
            resources = (kube.AUTHORIZATION_POLICIES,)
            source = KubeSource(api, resources, None, SourceMetrics(registry), (2, 3))
            cache = Cache(source.kinds)
            writer = StatusWriter(source, registry, now=lambda: NOW)

            async def nobody(_headers: dict[str, str]) -> None:
                return None

            server = ConfigServer(cache, nobody, ConfigMetrics(registry), writer.write)
            tasks = [asyncio.create_task(source.run(cache)), asyncio.create_task(server.run())]
            try:
                await until(lambda: all(_status(fake, n) for n in ("good", "bad", "ext", "l7")))
                await asyncio.sleep(0.5)  # the MODIFIED events come back and are compiled
                writes = [a for a in fake.applied if a["verb"] == "status"]
                assert len(writes) == 4  # once each: the echo of a write writes nothing
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        assert _status(fake, "good") == [
            {
                "type": "ZtunnelAccepted",
                "status": "True",
                "reason": "Accepted",
                "message": "attached to ztunnel",
                "observedGeneration": 3,
                "lastTransitionTime": NOW,
            }
        ]
        bad = _status(fake, "bad")[0]
        assert (bad["status"], bad["reason"]) == ("False", "Invalid")
        assert bad["message"].startswith("spec.rules[0].to[0].operation.ports: bad port (http)")
        ext = _status(fake, "ext")[0]
        assert (ext["reason"], ext["message"]) == (
            "UnsupportedValue",
            "ztunnel does not support the CUSTOM action",
        )
        assert _status(fake, "l7")[0]["type"] == "WaypointAccepted"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("current", "expect_write", "transition"),
    [
        ([], True, NOW),
        (  # the same condition: nothing to write
            [{**conditions._condition(GOOD, {"type": "policy"}), "lastTransitionTime": "t0"}],
            False,
            None,
        ),
        (  # a new generation, same status: written, the transition time kept
            [
                {
                    **conditions._condition(GOOD, {"type": "policy"}),
                    "observedGeneration": 2,
                    "lastTransitionTime": "t0",
                }
            ],
            True,
            "t0",
        ),
        (  # the status flips: a new transition time
            [{"type": "ZtunnelAccepted", "status": "False", "lastTransitionTime": "t0"}],
            True,
            NOW,
        ),
    ],
)
def test_the_transition_time_moves_only_when_the_status_does(
    current: list[dict[str, Any]], expect_write: bool, transition: str | None
) -> None:
    obj = {**GOOD, "status": {"conditions": current}}
    wanted = conditions.wanted(obj, {"type": "policy"}, NOW)
    assert (wanted is not None) is expect_write
    if wanted is not None:
        assert wanted[0]["lastTransitionTime"] == transition
