"""The node agent process (DaemonSet pod on Kubernetes; `ambientctl up` runs it in each node's
netns). `--dump-bpf` prints the final C program and exits. Metrics on :15025."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from http import HTTPStatus

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import ports
from bpf.loader import final_source
from common import http1
from localcluster import naming
from localcluster.store import ClusterStore
from node_agent.agent import Agent, AgentSettings
from sources import select
from sources.base import Cache

log = logging.getLogger("node_agent")

POLL_S = 0.1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node_agent.main")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--node")
    parser.add_argument("--dump-bpf", action="store_true", help="print the C program and exit")
    select.add_arguments(parser)
    return parser.parse_args(argv)


def step(agent: Agent, cache: Cache, last: int) -> int:
    """One pass: reconcile on a new source revision, repair drift, publish status. Returns the
    revision reconciled."""
    objects = cache.current()
    if objects is not None and (objects.revision != last or not agent.ready):
        agent.reconcile(objects)
        agent.write_status()
        last = objects.revision
    if agent.check_drift():
        agent.write_status()
    return last


async def run(args: argparse.Namespace) -> int:
    cluster, node = args.cluster, args.node
    store = ClusterStore(cluster)
    settings = AgentSettings(
        node=node,
        ztunnel_netns=naming.ztunnel_netns(cluster, node),
        pin_dir=naming.bpf_pin_dir(cluster) / node,
        run_dir=store.root / "nodes" / node / "agent",
    )
    agent = Agent(settings)
    # Netlink work is synchronous (pyroute2's IPRoute runs its own loop): keep it off ours.
    await asyncio.to_thread(agent.acquire_lock)
    await asyncio.to_thread(agent.start)
    source = await select.open_source(args, cluster, node=node)
    cache = Cache(source.kinds)
    watching = asyncio.create_task(source.run(cache))

    async def metrics(request: http1.Request) -> http1.Response:
        if request.target != "/metrics":
            return http1.Response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        agent.status()  # refreshes the verdict gauges from the map
        body = generate_latest(agent.metrics.registry)
        return http1.Response(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)

    server = await http1.serve(metrics, "0.0.0.0", ports.NODE_AGENT_METRICS)  # noqa: S104 - node netns
    # Not loop.add_signal_handler: that installs a wakeup fd, and pyroute2 forks helper children
    # (to open netlink sockets in other netns) that inherit it — a signal pyroute2 sends its
    # helper would then look like our SIGTERM. A flag checked every pass has no such channel.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last = -1
    while not stop.is_set():
        last = await asyncio.to_thread(step, agent, cache, last)
        await asyncio.sleep(POLL_S)
    watching.cancel()
    server.close()
    log.info("exiting; the datapath stays attached")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dump_bpf:
        print(final_source())
        return 0
    if not args.node:
        print("error: --node is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
