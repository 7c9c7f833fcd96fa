"""A fake Kubernetes API server speaking the real HTTP list/watch protocol (aiohttp).

Lists are paginated with `limit`/`continue`; watches stream newline-delimited JSON events from a
resourceVersion, send BOOKMARKs, end after `timeoutSeconds`, answer a compacted version with an
in-stream ERROR 410 (as the API server does), and can be dropped abruptly. `fieldSelector`
supports `spec.nodeName=` (what node agents use). Requests are recorded for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration

TOKEN = "fake-token"


@dataclass
class Event:
    version: int
    path: str
    type: str
    obj: dict[str, Any]


@dataclass
class FakeKube:
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)
    log: list[Event] = field(default_factory=list)
    version: int = 100
    compacted: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    bookmark_s: float = 0.2
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _watches: dict[int, web.Request] = field(default_factory=dict)
    _fail: dict[str, int] = field(default_factory=dict)
    unavailable: bool = False
    """Every request answered 503 (no healthy API server behind the load balancer)."""
    missing: set[str] = field(default_factory=set)
    """Paths answered 404, like the resources of a CRD that is not installed."""
    reviews: dict[str, dict[str, Any]] = field(default_factory=dict)
    """TokenReview answers by token: the `status.user` of an authenticated token."""
    applied: list[dict[str, Any]] = field(default_factory=list)
    """Server-side applies (PATCH application/apply-patch+yaml) and DELETEs, in order."""
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Applied objects by path; a GET answers them (a DaemonSet as fully rolled out)."""

    # --- test controls -------------------------------------------------------------------
    async def put(self, path: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        store = self.objects.setdefault(path, {})
        kind = "MODIFIED" if key in store else "ADDED"
        await self._record(path, kind, key, obj)

    async def delete(self, path: str, namespace: str, name: str) -> None:
        obj = self.objects[path][(namespace, name)]
        await self._record(path, "DELETED", (namespace, name), obj)

    def compact(self) -> None:
        """Forget history: every watch from an older version gets 410 Gone."""
        self.compacted = self.version

    def fail(self, path: str, times: int) -> None:
        """The next `times` lists of `path` answer 500."""
        self._fail[path] = times

    async def drop_watches(self) -> None:
        """Cut every open watch without a clean end (a dropped TCP connection)."""
        for request in list(self._watches.values()):
            if request.transport is not None:
                request.transport.abort()
        self._watches.clear()

    async def _record(
        self, path: str, kind: str, key: tuple[str, str], obj: dict[str, Any]
    ) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        if kind == "DELETED":
            del self.objects[path][key]
        else:
            self.objects[path][key] = obj
        self.log.append(Event(self.version, path, kind, obj))
        async with self._changed:
            self._changed.notify_all()

    # --- the HTTP API ------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.token_review)
        app.router.add_patch("/{tail:.*}", self.apply)
        app.router.add_delete("/{tail:.*}", self.delete_object)
        return app

    async def token_review(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized")
        review = await request.json()
        self.requests.append({"path": request.path, "token": review["spec"]["token"]})
        user = self.reviews.get(review["spec"]["token"])
        review["status"] = (
            {"authenticated": True, "user": user, "audiences": review["spec"]["audiences"]}
            if user
            else {"authenticated": False, "error": "invalid bearer token"}
        )
        return web.json_response(review, status=201)

    async def apply(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized")
        if request.content_type == "application/merge-patch+json":
            return await self._patch_status(request)
        if request.content_type != "application/apply-patch+yaml":
            return _status(415, f"unsupported patch type {request.content_type}")
        body = await request.json()  # JSON is YAML: what kubernetes clients send
        self.applied.append(
            {"verb": "apply", "path": request.path, "query": dict(request.query), "object": body}
        )
        body.setdefault("metadata", {})["generation"] = 1
        if body.get("kind") == "DaemonSet":
            body["status"] = {
                "observedGeneration": 1,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberReady": 3,
            }
        self.live[request.path] = body
        return web.json_response(body)

    async def _patch_status(self, request: web.Request) -> web.Response:
        """A merge patch of an object's status subresource (`.../<plural>/<name>/status`):
        the stored object's status merged, a MODIFIED event, as the API server does."""
        parts = request.path.split("/")
        if len(parts) < 4 or parts[-1] != "status" or parts[-5] != "namespaces":
            return _status(404, "only namespaced status subresources are faked")
        namespace, plural, name = parts[-4], parts[-3], parts[-2]
        path = "/".join([*parts[:-5], plural])
        obj = self.objects.get(path, {}).get((namespace, name))
        if obj is None:
            return _status(404, f'{plural} "{name}" not found')
        body = await request.json()
        self.applied.append({"verb": "status", "path": request.path, "object": body})
        updated = copy.deepcopy(obj)
        updated["status"] = {**(obj.get("status") or {}), **body.get("status", {})}
        await self._record(path, "MODIFIED", (namespace, name), updated)
        return web.json_response(self.objects[path][(namespace, name)])

    async def delete_object(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized")
        self.applied.append({"verb": "delete", "path": request.path})
        if self.live.pop(request.path, None) is None:
            return _status(404, "not found")
        return web.json_response({"kind": "Status", "status": "Success"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append({"path": request.path, **query})
        if (refusal := self._refusal(request)) is not None:
            return refusal
        if query.get("watch") in {"true", "1"}:
            return await self._watch(request, query)
        if request.path in self.live:
            return web.json_response(self.live[request.path])
        if self._fail.get(request.path, 0) > 0:
            self._fail[request.path] -= 1
            return _status(500, "injected failure")
        return self._list(request.path, query)

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized")
        if self.unavailable:
            return _status(503, "no healthy upstream")
        if request.path in self.missing:
            return _status(404, "the server could not find the requested resource")
        return None

    def _selected(self, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
        items = [o for _, o in sorted(self.objects.get(path, {}).items())]
        return [o for o in items if _matches(o, query.get("fieldSelector"))]

    def _list(self, path: str, query: dict[str, str]) -> web.Response:
        items = self._selected(path, query)
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(items) or 1)
        page = [
            {k: v for k, v in o.items() if k not in {"kind", "apiVersion"}}
            for o in items[start : start + limit]
        ]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": "List", "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, query: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        since = int(query.get("resourceVersion") or self.version)
        if since < self.compacted:
            gone = {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": f"too old resource version: {since} ({self.compacted})",
            }
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return resp
        self._watches[id(request)] = request
        deadline = asyncio.get_running_loop().time() + float(query.get("timeoutSeconds", 30))
        bookmarks = query.get("allowWatchBookmarks") == "true"
        try:
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                for ev in [e for e in self.log if e.version > since]:
                    since = ev.version
                    if ev.path == request.path and _matches(ev.obj, query.get("fieldSelector")):
                        line = {"type": ev.type, "object": ev.obj}
                        await resp.write(json.dumps(line).encode() + b"\n")
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait(), min(left, self.bookmark_s))
                    except TimeoutError:
                        if bookmarks:
                            mark = {
                                "type": "BOOKMARK",
                                "object": {"metadata": {"resourceVersion": str(since)}},
                            }
                            await resp.write(json.dumps(mark).encode() + b"\n")
        finally:
            self._watches.pop(id(request), None)
        return resp


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    field_name, _, value = selector.partition("=")
    assert field_name == "spec.nodeName", selector
    return bool(obj.get("spec", {}).get("nodeName") == value)


def _status(code: int, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "message": message}, status=code)


@contextlib.asynccontextmanager
async def serving(fake: FakeKube) -> AsyncIterator[ApiClient]:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = Configuration(host=f"http://127.0.0.1:{port}")
    config.api_key = {"BearerToken": TOKEN}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    async with ApiClient(config) as api:
        try:
            yield api
        finally:
            await fake.drop_watches()
            await runner.cleanup()


async def serve_forever(port: int, unreachable_flag: str) -> None:
    """The fake as a process of its own (a root test runs it inside a node's netns): it
    answers 503 to everything while the file `unreachable_flag` exists."""
    fake = FakeKube()
    await fake.put("/api/v1/namespaces", {"kind": "Namespace", "metadata": {"name": "default"}})
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    flag = Path(unreachable_flag)
    while True:
        down = flag.exists()
        if down and not fake.unavailable:
            await fake.drop_watches()
        fake.unavailable = down
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    import sys

    asyncio.run(serve_forever(int(sys.argv[1]), sys.argv[2]))
