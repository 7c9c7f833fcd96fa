"""The local cluster source: the state directory `ambientctl` edits.

A change is a whole store revision (written atomically by `ambientctl`), so the cache is
replaced wholesale. A file that cannot be parsed keeps the last good revision (StoreWatcher).
"""

from __future__ import annotations

import asyncio

from api.objects import KINDS
from localcluster.store import ClusterStore, StoreWatcher
from sources.base import Cache

# A stat() per poll; 50 ms keeps propagation well inside the 1 s budget for a few µs of CPU.
POLL_S = 0.05


class LocalSource:
    kinds = frozenset(KINDS)

    def __init__(self, store: ClusterStore, poll_s: float = POLL_S) -> None:
        self.watcher = StoreWatcher(store)
        self.poll_s = poll_s

    async def run(self, cache: Cache) -> None:
        while True:
            if self.watcher.poll():
                cache.replace_all(self.watcher.current)
                await cache.publish()
            await asyncio.sleep(self.poll_s)
