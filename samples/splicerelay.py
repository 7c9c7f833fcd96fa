"""A plaintext TCP relay made of ztunnel's own passthrough code (`Held` + `Splice` + `dial`), run
as a plain listener: the bench's "same relay, reached without eBPF" (PERF.md "eBPF redirect
cost"). Started in a ztunnel's netns, it sits where ztunnel's passthrough sits; clients address
it directly instead of being steered by the datapath.

  python3 -m samples.splicerelay LISTEN_HOST:PORT TARGET_HOST:PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from ztunnel.proxy import sockets
from ztunnel.proxy.splice import Held, Splice

CONNECT_TIMEOUT_S = 10.0


async def relay(listen: tuple[str, int], target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def join(held: Held) -> None:
        try:
            sock = await sockets.dial(
                target, src_ip=None, transparent=False, timeout_s=CONNECT_TIMEOUT_S
            )
        except OSError:
            held.refuse()
            return
        splice = Splice()
        held.handoff(splice.halves[0])
        await loop.create_connection(lambda: splice.halves[1], sock=sock)
        if held.transport is not None and not held.transport.is_closing():
            held.transport.resume_reading()

    def accepted(held: Held) -> None:
        task = loop.create_task(join(held))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await loop.create_server(
        lambda: Held(accepted),
        sock=sockets.listener(listen[0], listen[1], transparent=False),
    )
    async with server:
        print(f"relaying {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    uvloop.run(relay(_address(sys.argv[1]), _address(sys.argv[2])))


if __name__ == "__main__":
    main()
