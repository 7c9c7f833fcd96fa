"""The Kubernetes source against a fake API server speaking the real list/watch protocol."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from sources import kube, select
from sources.base import Cache
from sources.kube import KubeSource, SourceMetrics
from tests.fakekube import TOKEN, FakeKube, serving
from tests.waiting import until

PODS = "/api/v1/pods"
NAMESPACES = "/api/v1/namespaces"
POLICIES = "/apis/security.istio.io/v1/authorizationpolicies"


def pod(name: str, node: str = "node1", ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
        "spec": {"nodeName": node},
    }


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def names(cache: Cache, kind: str = "Pod") -> set[str]:
    current = cache.current()
    return {o["metadata"]["name"] for o in current.list(kind)} if current else set()


def run(
    body: Callable[[FakeKube, Cache, KubeSource], Awaitable[None]],
    resources: tuple[kube.Resource, ...] = kube.node_agent_resources(),
    selectors: dict[str, str] | None = None,
    seed: Callable[[FakeKube], Awaitable[None]] | None = None,
) -> None:
    async def main() -> None:
        fake = FakeKube()
        await fake.put(NAMESPACES, namespace("default"))
        if seed:
            await seed(fake)
        async with serving(fake) as api:
            metrics = SourceMetrics(CollectorRegistry())
            source = KubeSource(api, resources, selectors, metrics, watch_timeout_s=(2, 3))
            cache = Cache(source.kinds)
            task = asyncio.create_task(source.run(cache))
            try:
                await body(fake, cache, source)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())


def lists(source: KubeSource, kind: str, reason: str) -> float:
    return float(source.metrics.lists.labels(kind=kind, reason=reason)._value.get())


def labels(cache: Cache, name: str) -> object:
    current = cache.current()
    pods = current.list("Pod") if current else []
    return next(p["metadata"].get("labels") for p in pods if p["metadata"]["name"] == name)


def test_list_then_watch_applies_add_modify_delete() -> None:
    async def seed(fake: FakeKube) -> None:
        await fake.put(PODS, pod("a"))

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: names(cache) == {"a"})
        first = cache.current()
        assert first is not None
        obj = first.list("Pod")[0]
        assert (obj["kind"], obj["apiVersion"]) == ("Pod", "v1"), "list items get their kind"
        await fake.put(PODS, pod("b"))
        await until(lambda: names(cache) == {"a", "b"})
        changed = pod("a")
        changed["metadata"]["labels"] = {"app": "x"}
        await fake.put(PODS, changed)
        await until(lambda: labels(cache, "a") == {"app": "x"})
        await fake.delete(PODS, "default", "b")
        await until(lambda: names(cache) == {"a"})
        assert lists(source, "Pod", "initial") == 1

    run(body, seed=seed)


def test_paginated_list_collects_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "PAGE_SIZE", 2)

    async def seed(fake: FakeKube) -> None:
        for i in range(5):
            await fake.put(PODS, pod(f"p{i}"))

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: len(names(cache)) == 5)
        pages = [r for r in fake.requests if r["path"] == PODS and "watch" not in r]
        assert [r.get("continue") for r in pages] == [None, "2", "4"]

    run(body, seed=seed)


def test_nothing_published_until_every_kind_is_listed() -> None:
    """Fail closed: half a cluster (pods without their policies) is never compiled."""

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await asyncio.sleep(0.5)
        assert cache.current() is None, "published before the policy list succeeded"
        await until(lambda: cache.current() is not None, timeout=8)
        assert source.metrics.errors.labels(kind="AuthorizationPolicy")._value.get() >= 2

    async def seed(fake: FakeKube) -> None:
        fake.fail(POLICIES, 2)

    resources = (*kube.node_agent_resources(), kube.RESOURCES[5])
    run(body, resources=resources, seed=seed)


def test_gone_410_relists_and_drops_what_was_deleted_meanwhile() -> None:
    async def seed(fake: FakeKube) -> None:
        await fake.put(PODS, pod("a"))
        await fake.put(PODS, pod("b"))

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: names(cache) == {"a", "b"})
        fake.bookmark_s = 60  # no bookmark may move the client past the compaction
        await fake.drop_watches()
        # While the client is away: a deletion and a compaction of the history.
        await fake.delete(PODS, "default", "b")
        await fake.put(PODS, pod("c"))
        fake.compact()
        await until(lambda: names(cache) == {"a", "c"})
        assert lists(source, "Pod", "gone") == 1

    run(body, seed=seed)


def test_dropped_watch_resumes_from_last_version_without_relisting() -> None:
    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: cache.current() is not None)
        await fake.put(PODS, pod("a"))
        await until(lambda: names(cache) == {"a"})
        seen = int(fake.log[-1].version)
        await fake.drop_watches()
        await fake.put(PODS, pod("b"))
        await until(lambda: names(cache) == {"a", "b"})
        resumed = [r for r in fake.requests if r["path"] == PODS and r.get("watch") == "true"]
        assert int(resumed[-1]["resourceVersion"]) >= seen
        assert lists(source, "Pod", "initial") == 1
        assert lists(source, "Pod", "gone") == 0
        assert source.metrics.errors.labels(kind="Pod")._value.get() >= 1

    run(body)


def test_an_unreachable_api_keeps_the_last_revision_says_since_when_and_catches_up() -> None:
    """RELIABILITY F-13: while every request fails, the cache keeps what it had (a node agent's
    datapath stays as it is), the failures are counted, and `unavailable` says since when and
    why; once the API answers again, what changed meanwhile arrives and the report clears."""

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await fake.put(PODS, pod("a"))
        await until(lambda: names(cache) == {"a"})
        assert cache.unavailable() is None
        fake.unavailable = True
        await fake.drop_watches()
        await until(lambda: cache.unavailable() is not None)
        await fake.put(PODS, pod("b"))  # made while this client cannot see it
        await asyncio.sleep(1.0)
        assert names(cache) == {"a"}, "the last revision must stay"
        seconds, reason = cache.unavailable() or (0.0, "")
        assert seconds >= 1.0 and "HTTP 503" in reason, reason
        assert source.metrics.errors.labels(kind="Pod")._value.get() >= 1
        fake.unavailable = False
        await until(lambda: names(cache) == {"a", "b"}, timeout=20)
        await until(lambda: cache.unavailable() is None)

    run(body)


def test_watch_end_resumes_from_the_bookmark() -> None:
    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: cache.current() is not None)
        await fake.put(NAMESPACES, namespace("other"))  # moves the version; no pod event
        # The server ends each watch after timeoutSeconds (2-3 s); the next one starts from
        # the bookmark, past the namespace event.
        await until(
            lambda: sum(1 for r in fake.requests if r["path"] == PODS and r.get("watch")) >= 2,
            timeout=6,
        )
        watches = [r for r in fake.requests if r["path"] == PODS and r.get("watch")]
        assert all(r["allowWatchBookmarks"] == "true" for r in watches)
        assert int(watches[-1]["resourceVersion"]) == fake.version
        assert lists(source, "Pod", "initial") == 1

    run(body)


def test_node_agent_sees_only_its_node_pods() -> None:
    async def seed(fake: FakeKube) -> None:
        await fake.put(PODS, pod("mine", node="node1"))
        await fake.put(PODS, pod("theirs", node="node2"))

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: names(cache) == {"mine"})
        await fake.put(PODS, pod("new-theirs", node="node2"))
        await fake.put(PODS, pod("new-mine", node="node1"))
        await until(lambda: names(cache) == {"mine", "new-mine"})
        pod_requests = [r for r in fake.requests if r["path"] == PODS]
        assert all(r["fieldSelector"] == "spec.nodeName=node1" for r in pod_requests)

    run(body, seed=seed, selectors={"Pod": "spec.nodeName=node1"})


def test_node_agent_source_from_a_kubeconfig_watches_only_its_node(tmp_path: Path) -> None:
    """The node agent's `--source kubernetes --kubeconfig F` path, end to end."""

    async def main() -> None:
        fake = FakeKube()
        await fake.put(NAMESPACES, namespace("default"))
        await fake.put(PODS, pod("mine", node="node2"))
        await fake.put(PODS, pod("theirs", node="node1"))
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "fake",
                            "cluster": {"server": f"http://127.0.0.1:{runner.addresses[0][1]}"},
                        }
                    ],
                    "users": [{"name": "agent", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "agent"}}],
                    "current-context": "c",
                }
            )
        )
        args = argparse.Namespace(source="kubernetes", kubeconfig=str(kubeconfig))
        source = await select.open_source(args, "unused", node="node2")
        assert isinstance(source, KubeSource)
        cache = Cache(source.kinds)
        task = asyncio.create_task(source.run(cache))
        try:
            await until(lambda: names(cache) == {"mine"})
            assert names(cache, "Namespace") == {"default"}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await source.api.close()
            await fake.drop_watches()
            await runner.cleanup()

    asyncio.run(main())


def test_a_kind_whose_crd_is_absent_counts_as_empty() -> None:
    """No Gateway API installed: the controller must still sync (and serve) the rest."""
    gateways = "/apis/gateway.networking.k8s.io/v1/gateways"

    async def seed(fake: FakeKube) -> None:
        fake.missing.add(gateways)
        await fake.put(PODS, pod("a"))

    async def body(fake: FakeKube, cache: Cache, source: KubeSource) -> None:
        await until(lambda: names(cache) == {"a"})
        current = cache.current()
        assert current is not None
        assert current.list("Gateway") == []

    gateway = next(r for r in kube.RESOURCES if r.kind == "Gateway")
    run(body, resources=(*kube.node_agent_resources(), gateway), seed=seed)
