"""The CSR queue: at most `limit` certificate requests in flight to the CA (RELIABILITY L-5: a
node starting with 500 identities must not stampede the CA), handed out by priority, as
ztunnel's SecretManager does (`Priority::{RealTime, Warmup, Background}`): a request a
connection is waiting on goes before the first fetch of an identity no one asked for yet, which
goes before a renewal of a certificate still valid. FIFO within a priority."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Hashable


class Priority(enum.IntEnum):
    REALTIME = 0  # a connection waits for it (`CertificateManager.get`)
    WARMUP = 1  # a local workload's first certificate
    BACKGROUND = 2  # renewal while the current certificate is still good


class CsrQueue:
    def __init__(self, limit: int) -> None:
        self.free = limit
        # One waiter per key (a worker per identity); insertion order is the FIFO order.
        self._waiting: dict[Hashable, tuple[Priority, asyncio.Future[None]]] = {}
        self.in_flight = 0

    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable, priority: Priority) -> AsyncIterator[None]:
        await self._acquire(key, priority)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._release()

    def promote(self, key: Hashable, priority: Priority) -> None:
        """`key`, if it waits, now waits at `priority` (or better), keeping its FIFO place."""
        if (entry := self._waiting.get(key)) is not None and priority < entry[0]:
            self._waiting[key] = (priority, entry[1])

    async def _acquire(self, key: Hashable, priority: Priority) -> None:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (priority, future)
        try:
            await future
        except asyncio.CancelledError:
            if self._waiting.get(key, (None, None))[1] is future:
                del self._waiting[key]
            elif future.done() and not future.cancelled():
                self._release()  # handed a slot it will not use: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            key = min(self._waiting, key=lambda k: self._waiting[k][0])  # first of the best
            _, future = self._waiting.pop(key)
            if not future.done():  # done: its task was cancelled and has not yet run
                future.set_result(None)
                return
        self.free += 1
