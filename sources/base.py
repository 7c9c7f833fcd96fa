"""The cache both cluster sources fill, and the one interface everything above reads.

Fail closed (DESIGN decision 1): no revision is published until every watched kind has been
listed once, so a reader never compiles config from half a cluster (a missing DENY policy would
otherwise read as "allow"). When the source cannot reach the cluster, the last revision stays
(RELIABILITY F-13: the datapath keeps its state) and `unavailable` says since when and why, for
readiness and status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from api.objects import Obj, ObjectRef
from localcluster.store import ObjectSet

log = logging.getLogger("sources")


class SourceError(Exception):
    """A source that cannot start (no credentials, no store)."""


def ref(obj: Obj) -> ObjectRef:
    meta = obj["metadata"]
    return ObjectRef(obj["kind"], meta.get("namespace", "") or "", meta["name"])


class Cache:
    """Objects by reference. Writers replace a kind (list) or apply one event (watch); readers
    get an immutable `ObjectSet` per revision and can wait for the next one."""

    def __init__(self, kinds: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.kinds = frozenset(kinds)
        self._items: dict[ObjectRef, Obj] = {}
        self._synced: set[str] = set()
        self._published: ObjectSet | None = None
        self._revision = 0
        self._changed = asyncio.Condition()
        self._clock = clock
        self._failing: dict[str, tuple[float, str]] = {}  # kind: (failing since, last reason)

    @property
    def synced(self) -> bool:
        return self._synced >= self.kinds

    def replace_kind(self, kind: str, objects: Iterable[Obj]) -> None:
        """A full list of one kind: what is not in it is gone."""
        for r in [r for r in self._items if r.kind == kind]:
            del self._items[r]
        for obj in objects:
            self._items[ref(obj)] = obj
        self._synced.add(kind)

    def replace_all(self, objects: ObjectSet) -> None:
        """The local store's unit of change: a whole revision."""
        self._items = {ref(o): o for kind in self.kinds for o in objects.list(kind)}
        self._synced = set(self.kinds)

    def apply(self, event: str, obj: Obj) -> None:
        """One watch event (ADDED, MODIFIED, DELETED)."""
        if event == "DELETED":
            self._items.pop(ref(obj), None)
        else:
            self._items[ref(obj)] = obj

    async def publish(self) -> None:
        """Make the current items the next revision and wake readers (once fully synced)."""
        if not self.synced:
            return
        self._revision += 1
        self._published = ObjectSet(dict(self._items), self._revision)
        async with self._changed:
            self._changed.notify_all()

    def current(self) -> ObjectSet | None:
        return self._published

    def source_failed(self, kind: str, reason: str) -> None:
        """The source could not reach the cluster for `kind` (what it had stays)."""
        since = self._failing[kind][0] if kind in self._failing else self._clock()
        self._failing[kind] = (since, reason)

    def source_answered(self, kind: str) -> None:
        self._failing.pop(kind, None)

    def unavailable(self) -> tuple[float, str] | None:
        """(seconds, reason) of the kind failing the longest, while any is; None otherwise."""
        if not self._failing:
            return None
        kind, (since, reason) = min(self._failing.items(), key=lambda item: item[1][0])
        return self._clock() - since, f"{kind}: {reason}"

    async def next_revision(self, after: int) -> ObjectSet:
        """The first published revision newer than `after`."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._published is not None and self._published.revision > after
            )
        assert self._published is not None
        return self._published


class ClusterSource(Protocol):
    """Fills a cache until cancelled; recovers from its own errors (backoff, relist)."""

    kinds: frozenset[str]

    async def run(self, cache: Cache) -> None: ...
