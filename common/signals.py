"""The one way our asyncio processes stop: SIGTERM or SIGINT sets the event their `run` awaits,
and `run` drains before it returns (the node agent is the exception: see node_agent/main.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


async def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)
    return 0
