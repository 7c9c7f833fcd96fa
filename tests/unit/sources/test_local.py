"""The local source publishes whole store revisions and keeps the last good one."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from localcluster.store import ClusterInfo, ClusterStore
from sources.base import Cache
from sources.local import LocalSource


def test_local_source_publishes_revisions_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    store = ClusterStore("tstlocal", root=tmp_path)
    store.create(ClusterInfo("tstlocal", nodes=1))

    async def main() -> None:
        source = LocalSource(store, poll_s=0.01)
        cache = Cache(source.kinds)
        task = asyncio.create_task(source.run(cache))
        try:
            with store.locked():
                objects = store.read()
                objects.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}})
                store.commit(objects)
            first = await asyncio.wait_for(cache.next_revision(0), 2)
            assert [o["metadata"]["name"] for o in first.list("Namespace")] == ["a"]
            store.objects_path.write_text("items: [unclosed\n")
            await asyncio.sleep(0.1)
            assert cache.current() is first, "a corrupt store file replaced the good revision"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
