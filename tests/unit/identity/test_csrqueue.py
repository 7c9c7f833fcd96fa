"""The CSR queue's order (RELIABILITY L-5): never more than `limit` in flight; a freed slot goes
to the best priority waiting, first come first served within it; a promotion keeps its place;
a waiter cancelled after it was handed a slot passes the slot on."""

from __future__ import annotations

import asyncio

import pytest

from ztunnel.identity.csrqueue import CsrQueue, Priority

R, W, B = Priority.REALTIME, Priority.WARMUP, Priority.BACKGROUND


async def served_order(limit: int, arrivals: list[tuple[str, Priority]]) -> list[str]:
    """Everyone arrives while the queue is full (a blocker holds every slot); the order in
    which they then get a slot."""
    queue, order = CsrQueue(limit), []
    release = asyncio.Event()

    async def blocker(i: int) -> None:
        async with queue.slot(f"blocker{i}", B):
            await release.wait()

    async def request(key: str, priority: Priority) -> None:
        async with queue.slot(key, priority):
            order.append(key)
            assert queue.in_flight <= limit
            await asyncio.sleep(0)

    blockers = [asyncio.create_task(blocker(i)) for i in range(limit)]
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(request(k, p)) for k, p in arrivals]
    await asyncio.sleep(0)
    assert queue.waiting() == len(arrivals)
    release.set()
    await asyncio.gather(*blockers, *tasks)
    assert queue.free == limit and queue.waiting() == 0
    return order


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        ([("a", B), ("b", W), ("c", R)], ["c", "b", "a"]),
        ([("a", W), ("b", W), ("c", W)], ["a", "b", "c"]),
        ([("a", B), ("b", R), ("c", B), ("d", R)], ["b", "d", "a", "c"]),
        ([("a", W), ("b", B), ("c", W), ("d", R), ("e", B)], ["d", "a", "c", "b", "e"]),
    ],
)
def test_the_best_priority_goes_first_then_first_come(
    arrivals: list[tuple[str, Priority]], expected: list[str]
) -> None:
    assert asyncio.run(served_order(1, arrivals)) == expected


def test_several_slots_keep_the_order_and_the_bound() -> None:
    arrivals = [(f"w{i}", W) for i in range(6)] + [("r", R)]
    order = asyncio.run(served_order(3, arrivals))
    assert order.index("r") == 0


def test_a_promoted_waiter_goes_ahead_of_its_old_priority() -> None:
    async def main() -> list[str]:
        queue, order = CsrQueue(1), []
        gate = asyncio.Event()

        async def hold() -> None:
            async with queue.slot("holder", B):
                await gate.wait()

        async def request(key: str, priority: Priority) -> None:
            async with queue.slot(key, priority):
                order.append(key)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(request(k, W)) for k in ("a", "b", "c")]
        await asyncio.sleep(0)
        queue.promote("c", R)  # a connection now waits for c
        queue.promote("a", B)  # never demoted
        gate.set()
        await asyncio.gather(holder, *tasks)
        return order

    assert asyncio.run(main()) == ["c", "a", "b"]


def test_a_waiter_cancelled_after_it_was_handed_the_slot_passes_it_on() -> None:
    async def main() -> None:
        queue = CsrQueue(1)
        gate = asyncio.Event()
        served: list[str] = []
        tasks: dict[str, asyncio.Task[None]] = {}

        async def hold() -> None:
            async with queue.slot("holder", B):
                await gate.wait()
            # The slot was just handed to `first`, which has not run yet, and never will.
            tasks["first"].cancel()

        async def request(key: str) -> None:
            async with queue.slot(key, W):
                served.append(key)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        for key in ("first", "second"):
            tasks[key] = asyncio.create_task(request(key))
        await asyncio.sleep(0)
        gate.set()
        await holder
        await asyncio.wait_for(tasks["second"], 1)
        assert served == ["second"]
        assert queue.free == 1 and queue.in_flight == 0

    asyncio.run(main())


def test_a_waiter_cancelled_while_queued_leaves_no_trace() -> None:
    async def main() -> None:
        queue = CsrQueue(1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with queue.slot("holder", B):
                await gate.wait()

        async def request() -> None:
            async with queue.slot("gone", W):
                raise AssertionError("a cancelled waiter was served")

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(request())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        assert queue.waiting() == 0
        gate.set()
        await holder
        assert queue.free == 1

    asyncio.run(main())
