"""The config stream's server side: compile on every source revision, push to each proxy.

Per proxy connection (HTTP/2 on 15012, chosen by ALPN `h2`; the CA keeps HTTP/1.1): the first
update is a snapshot, later ones are deltas against what the proxy last ACKed. One update is
in flight per proxy, so a slow proxy gets coalesced updates instead of a queue. A NACK is
counted, shown in status, and leaves the proxy on its previous version; the next change is
diffed against what it ACKed. A proxy that does not answer within ACK_TIMEOUT_S is dropped and
reconnects (resync). At most SNAPSHOT_SLOTS snapshots are in flight at once (RELIABILITY L-7:
a herd reconnecting after an outage is admitted in batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api.meshconfig import CRL_KEY, Resource
from common.stream import MessageChannel
from controller.config.compile import Mesh, Proxy, compile_mesh, diff, view
from localcluster.store import ObjectSet
from sources.base import Cache

log = logging.getLogger("controller.config")

PATH = "/v1/config/stream"
ACK_TIMEOUT_S = 30.0
OPEN_TIMEOUT_S = 10.0  # TLS is done; the request headers must follow promptly
SNAPSHOT_SLOTS = 16
READ_CHUNK = 256 * 1024


_KIND_NAMES = {"policy": "AuthorizationPolicy", "peerauth": "PeerAuthentication"}


class ConfigMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "ambientmesh_controller_connected_proxies",
            "Proxies holding a config stream, by kind",
            ["kind"],
            registry=registry,
        )
        self.version = Gauge(
            "ambientmesh_controller_config_version",
            "Version of the compiled mesh config",
            registry=registry,
        )
        self.pushes = Counter(
            "ambientmesh_controller_pushes",
            "Updates sent, by type (snapshot, delta)",
            ["type"],
            registry=registry,
        )
        self.nacks = Counter(
            "ambientmesh_controller_nacks", "Updates a proxy rejected", registry=registry
        )
        self.invalid = Gauge(
            "ambientmesh_controller_invalid_objects",
            "Objects Istio's validation refuses, enforced as fail-closed stand-ins, by kind",
            ["kind"],
            registry=registry,
        )
        self.push_seconds = Histogram(
            "ambientmesh_controller_push_seconds",
            "From a cluster change reaching the controller to a proxy's ACK of the delta",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


@dataclass
class ProxyStatus:
    id: int
    kind: str
    node: str
    peer: str
    connected_at: float = field(default_factory=time.time)
    acked_version: int = 0
    nacked_version: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "node": self.node,
            "peer": self.peer,
            "connectedAt": round(self.connected_at, 3),
            "ackedVersion": self.acked_version,
            "nackedVersion": self.nacked_version,
            "lastError": self.last_error,
        }


class ConfigServer:
    def __init__(
        self,
        cache: Cache,
        authenticate: Callable[[dict[str, str]], Awaitable[Proxy | None]],
        metrics: ConfigMetrics,
        after_compile: Callable[[ObjectSet, Mesh], Awaitable[None]] | None = None,
    ) -> None:
        self.cache = cache
        self.after_compile = after_compile  # the status writer, on Kubernetes
        self.authenticate = authenticate
        self.metrics = metrics
        self.mesh: Mesh | None = None
        self._compiled: Mesh | None = None  # from the cluster's objects
        self._crl: Resource | None = None
        self.version = 0
        self.changed_at: dict[int, float] = {}
        self.proxies: dict[int, ProxyStatus] = {}
        self._ids = itertools.count(1)
        self._new_version = asyncio.Condition()
        self._snapshot_slots = asyncio.Semaphore(SNAPSHOT_SLOTS)
        self._sessions: set[_Session] = set()
        self.invalid: dict[str, tuple[str, str]] = {}  # resource key: (type, reason)

    async def run(self) -> None:
        """Compile each new source revision; wake the sessions when the result changed."""
        revision = 0
        while True:
            objects = await self.cache.next_revision(revision)
            revision = objects.revision
            self._compiled = await asyncio.to_thread(compile_mesh, objects)  # 10 000 pods: ~100 ms
            self._report_invalid(self._compiled)
            await self._publish()
            if self.after_compile is not None:  # after the proxies have it: they come first
                await self.after_compile(objects, self._compiled)

    def _report_invalid(self, mesh: Mesh) -> None:
        """Name each refused object once per reason (log), count them (metrics), list them
        (status): the user finds why a workload's traffic is refused without reading code."""
        found = {
            key: (res["type"], res["invalid"])
            for key, res in mesh.resources.items()
            if res.get("invalid")
        }
        for key, (kind, reason) in sorted(found.items()):
            if self.invalid.get(key) != (kind, reason):
                log.warning("%s %s is invalid, enforced fail-closed: %s", kind, key, reason)
        self.invalid = found
        for kind in ("policy", "peerauth"):
            count = sum(1 for k, _ in found.values() if k == kind)
            self.metrics.invalid.labels(kind=_KIND_NAMES[kind]).set(count)

    async def set_crl(self, pem: str | None) -> None:
        """The CA's CRL (None: none), streamed to every proxy with the rest of the mesh."""
        self._crl = {"type": "crl", "key": "ca", "pem": pem} if pem is not None else None
        await self._publish()

    async def _publish(self) -> None:
        if self._compiled is None:
            return
        resources = self._compiled.resources
        if self._crl is not None:
            resources = {**resources, CRL_KEY: self._crl}
        mesh = Mesh(resources, self._compiled.remote)
        if self.mesh is not None and mesh.resources == self.mesh.resources:
            return
        self.mesh = mesh
        self.version += 1
        self.changed_at[self.version] = time.monotonic()
        for old in [v for v in self.changed_at if v < self.version - 1000]:
            del self.changed_at[old]
        self.metrics.version.set(self.version)
        async with self._new_version:
            self._new_version.notify_all()

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "proxies": [p.as_dict() for p in sorted(self.proxies.values(), key=lambda p: p.id)],
            "invalid": [
                {"kind": _KIND_NAMES[kind], "object": key.split("/", 1)[1], "reason": reason}
                for key, (kind, reason) in sorted(self.invalid.items())
            ],
        }

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One proxy's HTTP/2 connection, from the TLS handshake to its end."""
        channel = MessageChannel(client_side=False)
        session = _Session(self, channel, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("config stream %s ended: %s", session.peer, exc)
        finally:
            self._sessions.discard(session)
            session.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def shutdown(self) -> None:
        """GOAWAY to every proxy: they reconnect (to a new instance) instead of idling here."""
        for session in list(self._sessions):
            session.channel.close("controller shutting down")
            session.flush()
            session.writer.close()

    async def wait_version(self, after: int) -> None:
        async with self._new_version:
            await self._new_version.wait_for(lambda: self.version > after)


class _Session:
    def __init__(
        self,
        server: ConfigServer,
        channel: MessageChannel,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server, self.channel, self.reader, self.writer = server, channel, reader, writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.status: ProxyStatus | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    def flush(self) -> None:
        if data := self.channel.data_to_send():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while not self.channel.closed:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                for message in self.channel.receive(data):
                    self.inbox.put_nowait(message)
                if self.channel.stream_id is not None:
                    self._opened.set()
                self.flush()  # includes DATA a window update released
        finally:
            self.inbox.put_nowait(None)
            self._opened.set()

    async def run(self) -> None:
        self.flush()
        self._reader_task = asyncio.create_task(self._read())
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            await self._opened.wait()
        if self.channel.stream_id is None or self.channel.closed:
            return
        proxy = await self._accept()
        self.flush()
        if proxy is None:
            await self.writer.drain()
            return
        self.status = ProxyStatus(next(self.server._ids), proxy.kind, proxy.node, self.peer)
        self.server.proxies[self.status.id] = self.status
        self.server.metrics.connected.labels(kind=proxy.kind).inc()
        log.info("config stream open: %s %s from %s", proxy.kind, proxy.node, self.peer)
        await self._push_loop(proxy)

    async def _accept(self) -> Proxy | None:
        headers = self.channel.request_headers
        if headers.get(":path") != PATH or headers.get(":method") != "POST":
            self.channel.respond(404)
            return None
        proxy = await self.server.authenticate(headers)
        if proxy is None:
            log.warning("config stream from %s refused: not authenticated", self.peer)
            self.channel.respond(401)
            return None
        self.channel.respond(200)
        return proxy

    async def _push_loop(self, proxy: Proxy) -> None:
        assert self.status is not None
        acked: dict[str, Resource] | None = None
        considered = 0
        nonces = itertools.count(1)
        while not self.channel.closed:
            if self.server.mesh is not None and self.server.version > considered:
                considered = self.server.version
                target = view(self.server.mesh, proxy)
                if acked is None or target != acked:
                    if not await self._push(target, acked, considered, next(nonces)):
                        return
                    if self.status.acked_version == considered:
                        acked = target
                else:  # nothing of this version is the proxy's: what it holds is current
                    self.status.acked_version = considered
                continue
            waiter = asyncio.create_task(self.server.wait_version(considered))
            message = asyncio.create_task(self.inbox.get())
            done, pending = await asyncio.wait(
                {waiter, message}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if message in done and message.result() is None:
                return  # connection gone

    async def _push(
        self, target: dict[str, Resource], acked: dict[str, Resource] | None, version: int, n: int
    ) -> bool:
        """Send one update and wait for its answer; False when the connection should end."""
        assert self.status is not None
        snapshot = acked is None
        upserts, removes = diff(acked or {}, target)
        nonce = str(n)
        update = {
            "type": "update",
            "version": version,
            "nonce": nonce,
            "snapshot": snapshot,
            "upserts": upserts,
            "removes": removes,
        }
        slot = self.server._snapshot_slots if snapshot else contextlib.nullcontext()
        async with slot:
            self.channel.send(update)
            self.flush()
            self.server.metrics.pushes.labels(type="snapshot" if snapshot else "delta").inc()
            try:
                reply = await self._reply(nonce)
            except TimeoutError:
                log.warning("proxy %s did not answer update %d; dropping it", self.peer, version)
                return False
        if reply is None:
            return False
        if reply.get("type") == "ack":
            self.status.acked_version = version
            if not snapshot and (at := self.server.changed_at.get(version)) is not None:
                self.server.metrics.push_seconds.observe(time.monotonic() - at)
        else:
            self.status.nacked_version = version
            self.status.last_error = str(reply.get("error", ""))[:512]
            self.server.metrics.nacks.inc()
            log.warning(
                "proxy %s NACKed version %d: %s", self.peer, version, self.status.last_error
            )
        return True

    async def _reply(self, nonce: str) -> dict[str, Any] | None:
        async with asyncio.timeout(ACK_TIMEOUT_S):
            while True:
                message = await self.inbox.get()
                if message is None:
                    return None
                if message.get("nonce") == nonce and message.get("type") in {"ack", "nack"}:
                    return message

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self.status is not None:
            self.server.proxies.pop(self.status.id, None)
            self.server.metrics.connected.labels(kind=self.status.kind).dec()
