"""The Kubernetes cluster source: list + watch through kubernetes_asyncio, client-go style.

Per watched resource: a paginated list (500 per page, client-go's default), then a watch from
the list's resourceVersion with bookmarks, resumed from the last seen resourceVersion when the
stream ends or drops, and a full relist when the server answers 410 Gone (the version was
compacted away). Errors back off with jitter (0.5 s → 30 s). Watches end server-side after a
random 5-10 min, as client-go's reflector does, so a half-dead connection cannot hang forever.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import config, watch
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration
from prometheus_client import CollectorRegistry, Counter

from api import mesh
from api.ambient import ROOT_NAMESPACE
from api.objects import Obj
from sources.base import Cache, SourceError

log = logging.getLogger("sources.kube")

PAGE_SIZE = 500  # client-go's reflector default
WATCH_TIMEOUT_S = (300, 600)  # client-go: minWatchTimeout 5 min x (1 + rand)
LIST_TIMEOUT_S = 60.0
BACKOFF_S = (0.5, 30.0)
ABSENT_KIND_RETRY_S = 30.0  # a kind whose CRD is missing: how often to look for it again


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    cluster_scoped: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/{self.plural}"


NAMESPACES = Resource("Namespace", "", "v1", "namespaces", cluster_scoped=True)
PODS = Resource("Pod", "", "v1", "pods")
AUTHORIZATION_POLICIES = Resource(
    "AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies"
)
RESOURCES = (
    NAMESPACES,
    PODS,
    Resource("Service", "", "v1", "services"),
    Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices"),
    Resource("ServiceAccount", "", "v1", "serviceaccounts"),
    AUTHORIZATION_POLICIES,
    Resource("PeerAuthentication", "security.istio.io", "v1", "peerauthentications"),
    Resource("Gateway", "gateway.networking.k8s.io", "v1", "gateways"),
    Resource("ConfigMap", "", "v1", "configmaps"),
)
"""What the controller watches (cluster-wide; ConfigMaps: Istio's MeshConfig alone)."""
CONTROLLER_SELECTORS = {
    "ConfigMap": f"metadata.namespace={ROOT_NAMESPACE},metadata.name={mesh.CONFIGMAP}"
}


def node_agent_resources() -> tuple[Resource, ...]:
    """What a node agent watches: namespaces (for the enrollment label) and its node's pods."""
    return (NAMESPACES, PODS)


async def api_client(kubeconfig: str | None = None) -> ApiClient:
    """In-cluster credentials (the pod's service account), or a kubeconfig file."""
    conf = Configuration()
    try:
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
        else:
            config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as exc:
        raise SourceError(f"no Kubernetes credentials: {exc}") from None
    return ApiClient(conf)


class SourceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "ambientmesh_source_events",
            "Watch events applied, by kind and type",
            ["kind", "type"],
            registry=registry,
        )
        self.lists = Counter(
            "ambientmesh_source_lists",
            "Full lists, by kind and reason (initial, gone, error)",
            ["kind", "reason"],
            registry=registry,
        )
        self.errors = Counter(
            "ambientmesh_source_errors",
            "List or watch failures (followed by a backoff), by kind",
            ["kind"],
            registry=registry,
        )

    def register(self, registry: CollectorRegistry) -> None:
        """Serve these from a component's own registry too (its /metrics)."""
        for metric in (self.events, self.lists, self.errors):
            registry.register(metric)


class _Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_S[0]

    def next(self) -> float:
        """Full jitter, capped (no herd of informers after an API server restart)."""
        delay = random.uniform(self.delay / 2, self.delay)  # noqa: S311 - jitter, not crypto
        self.delay = min(self.delay * 2, BACKOFF_S[1])
        return delay

    def reset(self) -> None:
        self.delay = BACKOFF_S[0]


class KubeSource:
    def __init__(
        self,
        api: ApiClient,
        resources: Iterable[Resource] = RESOURCES,
        field_selectors: dict[str, str] | None = None,
        metrics: SourceMetrics | None = None,
        watch_timeout_s: tuple[int, int] = WATCH_TIMEOUT_S,
    ) -> None:
        self.api = api
        self.resources = tuple(resources)
        self.kinds = frozenset(r.kind for r in self.resources)
        self.field_selectors = field_selectors or {}
        self.metrics = metrics or SourceMetrics(CollectorRegistry())
        self.watch_timeout_s = watch_timeout_s
        self.versions: dict[str, str | None] = {}
        """Per kind: the resourceVersion to resume watching from (None: list first)."""

    async def run(self, cache: Cache) -> None:
        await asyncio.gather(*(self._informer(cache, r) for r in self.resources))

    async def _informer(self, cache: Cache, res: Resource) -> None:
        backoff = _Backoff()
        reason = "initial"
        while True:
            try:
                if self.versions.get(res.kind) is None:
                    items, self.versions[res.kind] = await self._list(res)
                    cache.source_answered(res.kind)
                    self.metrics.lists.labels(kind=res.kind, reason=reason).inc()
                    cache.replace_kind(res.kind, items)
                    await cache.publish()
                await self._watch(cache, res)
                backoff.reset()
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: resourceVersion expired; relisting", res.plural)
                    self.versions[res.kind], reason = None, "gone"
                    continue
                if exc.status == 404 and self.versions.get(res.kind) is None:
                    # The kind's CRD is not installed (no Gateway API, no Istio CRDs): none of
                    # it can exist, which is a complete answer; look again later.
                    cache.source_answered(res.kind)
                    cache.replace_kind(res.kind, [])
                    await cache.publish()
                    await asyncio.sleep(ABSENT_KIND_RETRY_S)
                    continue
                self._failed(cache, res, f"HTTP {exc.status} {exc.reason}")
                if exc.status in {401, 403, 404}:
                    self.versions[res.kind], reason = None, "error"
                await asyncio.sleep(backoff.next())
            except Exception as exc:
                self._failed(cache, res, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff.next())

    def _failed(self, cache: Cache, res: Resource, reason: str) -> None:
        self.metrics.errors.labels(kind=res.kind).inc()
        cache.source_failed(res.kind, reason)
        log.warning("%s: %s; retrying", res.plural, reason)

    async def _call(self, res: Resource, **params: Any) -> Any:
        """list or watch {res} (a generic list function: kubernetes_asyncio's `Watch` drives it)."""
        query = [
            (key, _query_value(params[arg]))
            for arg, key in (
                ("watch", "watch"),
                ("resource_version", "resourceVersion"),
                ("allow_watch_bookmarks", "allowWatchBookmarks"),
                ("timeout_seconds", "timeoutSeconds"),
                ("limit", "limit"),
                ("_continue", "continue"),
            )
            if params.get(arg) not in (None, False)
        ]
        if selector := self.field_selectors.get(res.kind):
            query.append(("fieldSelector", selector))
        return await self.api.call_api(
            res.path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=params.get("_request_timeout"),
        )

    async def patch_status(
        self, res: Resource, namespace: str, name: str, status: Obj
    ) -> tuple[int, str]:
        """Merge `status` into an object's status subresource; (HTTP status, message)."""
        path = f"{res.path.rsplit('/', 1)[0]}/namespaces/{namespace}/{res.plural}/{name}/status"
        resp = await self.api.call_api(
            path,
            "PATCH",
            header_params={
                "Accept": "application/json",
                "Content-Type": "application/merge-patch+json",
            },
            body={"status": status},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=LIST_TIMEOUT_S,
        )
        async with resp:
            body = await resp.json(content_type=None)
        return resp.status, str(body.get("message", "")) if isinstance(body, dict) else ""

    async def _list(self, res: Resource) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        token: str | None = None
        while True:
            resp = await self._call(
                res, limit=PAGE_SIZE, _continue=token, _request_timeout=LIST_TIMEOUT_S
            )
            async with resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise ApiException(status=resp.status, reason=body.get("message", ""))
            for obj in body.get("items") or []:
                items.append(self._typed(res, obj))
            token = body["metadata"].get("continue")
            if not token:
                return items, body["metadata"]["resourceVersion"]

    async def _watch(self, cache: Cache, res: Resource) -> None:
        """Apply events until the server ends the watch, keeping the version to resume from
        (also when the stream drops mid-way)."""
        timeout = random.randint(*self.watch_timeout_s)  # noqa: S311

        async def call(**params: Any) -> Any:
            resp = await self._call(res, **params)
            if resp.status == 200:  # the watch is established: the API answers again
                cache.source_answered(res.kind)
            return resp

        stream = watch.Watch(return_type="object")  # raw dicts: no model objects per event
        async with stream:
            async for event in stream.stream(
                call,
                resource_version=self.versions[res.kind],
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout + 30),
            ):
                kind, obj = event["type"], event["raw_object"]
                self.versions[res.kind] = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                cache.apply(kind, self._typed(res, obj))
                self.metrics.events.labels(kind=res.kind, type=kind).inc()
                await cache.publish()

    @staticmethod
    def _typed(res: Resource, obj: Obj) -> Obj:
        # List items carry no kind/apiVersion; the cache keys on kind.
        obj.setdefault("kind", res.kind)
        obj.setdefault("apiVersion", res.api_version)
        return obj


def _query_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
