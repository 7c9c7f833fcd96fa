"""The node agent process (DaemonSet pod on Kubernetes; `ambientctl up` runs it in each node's
netns). `--dump-bpf` prints the final C program and exits. Metrics on :15025."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import threading
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pyroute2.netlink.exceptions import NetlinkError

from api import ports
from bpf.loader import final_source
from common import http1
from localcluster import naming
from localcluster.store import ClusterStore
from node_agent import attach, discover
from node_agent.agent import Agent, AgentSettings
from sources import select
from sources.base import Cache
from sources.kube import KubeSource

log = logging.getLogger("node_agent")

POLL_S = 0.1
START_RETRY_S = 2.0
# How long the Kubernetes API may be unreachable before the agent reports itself unready: long
# enough to ride out an API server restart without every node flapping.
API_GRACE_S = 30.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node_agent.main")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--node")
    parser.add_argument("--dump-bpf", action="store_true", help="print the C program and exit")
    parser.add_argument(
        "--ztunnel",
        default=None,
        help="ztunnel's netns name (local default), or `auto`: find the node's ztunnel pod "
        "(Kubernetes)",
    )
    parser.add_argument("--system-namespace", default="ambientmesh-system")
    parser.add_argument("--pin-dir", type=Path, default=None, help="bpffs directory for maps")
    parser.add_argument("--run-dir", type=Path, default=None, help="lock and status files")
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="detach every program and remove the pins, then idle (uninstall)",
    )
    select.add_arguments(parser)
    return parser.parse_args(argv)


def step(agent: Agent, cache: Cache, last: int) -> int:
    """One pass: reconcile on a new source revision, repair drift, publish status. Returns the
    revision reconciled."""
    objects = cache.current()
    if objects is not None and (objects.revision != last or not agent.ready or agent.retry_due()):
        agent.reconcile(objects)
        agent.write_status()
        last = objects.revision
    if agent.check_drift():
        agent.write_status()
    return last


def readiness(ready: bool, problem: str, unavailable: tuple[float, str] | None) -> tuple[bool, str]:
    """The readiness answer: the datapath rebuilt and every pod reconciled, and the cluster's
    state current (F-13: an unreachable API leaves the datapath as it was, and says so)."""
    if not ready:
        return False, f"not ready: {problem or 'reconciling'}"
    if unavailable is not None and unavailable[0] >= API_GRACE_S:
        seconds, reason = unavailable
        return False, (
            f"not ready: Kubernetes API unreachable for {seconds:.0f}s ({reason}); "
            "the datapath keeps its last state"
        )
    return True, "ready"


def _settings(args: argparse.Namespace) -> AgentSettings:
    cluster, node = args.cluster, args.node
    auto = args.ztunnel == "auto"
    return AgentSettings(
        node=node,
        ztunnel_netns="" if auto else args.ztunnel or naming.ztunnel_netns(cluster, node),
        pin_dir=args.pin_dir or naming.bpf_pin_dir(cluster) / node,
        run_dir=args.run_dir or ClusterStore(cluster).root / "nodes" / node / "agent",
        ztunnel_host_if="" if auto else "ztunnel",
        reserve_pod_ports=auto,
    )


async def _find_ztunnel(
    args: argparse.Namespace, cache: Cache, stop: threading.Event
) -> tuple[str, str] | None:
    """Kubernetes: the node's ztunnel pod's IP and netns path, once found; None if stopped."""
    while not stop.is_set():
        objects = cache.current()
        ip = objects and discover.ztunnel_ip(objects, args.node, args.system_namespace)
        if ip and (path := await asyncio.to_thread(discover.netns_holding, ip)):
            log.info("ztunnel %s found in %s", ip, path)
            return ip, path
        log.info("waiting for this node's ztunnel pod")
        await asyncio.sleep(1.0)
    return None


async def run(args: argparse.Namespace) -> int:
    # Not loop.add_signal_handler: that installs a wakeup fd, and pyroute2 forks helper children
    # (to open netlink sockets in other netns) that inherit it — a signal pyroute2 sends its
    # helper would then look like our SIGTERM. A flag checked every pass has no such channel.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = _settings(args)
    if args.cleanup:
        await asyncio.to_thread(cleanup, settings)
        while not stop.is_set():  # a DaemonSet container must stay up; uninstall deletes it
            await asyncio.sleep(POLL_S)
        return 0
    source = await select.open_source(args, args.cluster, node=args.node)
    cache = Cache(source.kinds)
    watching = asyncio.create_task(source.run(cache))
    zt_ip = ""
    if args.ztunnel == "auto":
        found = await _find_ztunnel(args, cache, stop)
        if found is None:
            watching.cancel()
            return 0
        zt_ip, path = found
        settings = replace(settings, ztunnel_netns=path)
    agent = Agent(settings)
    if isinstance(source, KubeSource):
        source.metrics.register(agent.metrics.registry)
    # Netlink work is synchronous (pyroute2's IPRoute runs its own loop): keep it off ours.
    await asyncio.to_thread(agent.acquire_lock)

    async def metrics(request: http1.Request) -> http1.Response:
        if request.target == "/healthz/ready":
            # Ready once the datapath is rebuilt and every pod of the node reconciled (after a
            # reboot wiped the pins too): the DaemonSet's readiness gate.
            ok, why = readiness(agent.ready, agent.problem, cache.unavailable())
            return http1.Response(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                f"{why}\n".encode(),
                "text/plain",
            )
        if request.target != "/metrics":
            return http1.Response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        agent.status()  # refreshes the verdict gauges from the map
        body = generate_latest(agent.metrics.registry)
        return http1.Response(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)

    server = await http1.serve(metrics, "0.0.0.0", ports.NODE_AGENT_METRICS)  # noqa: S104 - node netns
    if not await _start(agent, stop):
        watching.cancel()
        server.close()
        return 0
    last = -1
    while not stop.is_set():
        last = await asyncio.to_thread(step, agent, cache, last)
        current = cache.current()
        if (
            zt_ip
            and current
            and discover.ztunnel_ip(current, args.node, args.system_namespace)
            not in (
                zt_ip,
                None,
            )
        ):
            # A new ztunnel pod: start over to find it (a restart interrupts nothing).
            log.info("this node's ztunnel pod changed; restarting to re-discover it")
            watching.cancel()
            server.close()
            return 3
        await asyncio.sleep(POLL_S)
    watching.cancel()
    server.close()
    log.info("exiting; the datapath stays attached")
    return 0


async def _start(agent: Agent, stop: threading.Event) -> bool:
    """Builds the datapath, retrying until it works or the agent is stopped (False). Until then
    the agent stays up and unready, and says why (F-13: no bpffs, a kernel that refuses the
    programs); pinned programs from an earlier agent keep serving the pods meanwhile."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(agent.start)
        except Exception as exc:  # BCC raises bare Exceptions; whatever the cause, retry
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            if reason != agent.problem:  # one line per distinct reason, not per attempt
                log.error("cannot start the datapath: %s (retrying)", reason)  # noqa: TRY400
            agent.problem = reason
            agent.metrics.errors.labels(reason="start_failed").inc()
            agent.write_status()
            await asyncio.sleep(START_RETRY_S)
            continue
        if agent.problem:
            log.info("datapath started after: %s", agent.problem)
        agent.problem = ""
        return True
    return False


def cleanup(settings: AgentSettings) -> None:
    """Uninstall: detach every program from the node and ztunnel's netns, undo ztunnel's local
    routing, remove the pinned maps. Pods' traffic flows as if the mesh never was."""
    removed = attach.detach_all(None)
    if settings.ztunnel_netns:
        with contextlib.suppress(OSError, NetlinkError):
            removed += attach.detach_all(settings.ztunnel_netns)
            attach.remove_local_routing(settings.ztunnel_netns)
    shutil.rmtree(settings.pin_dir, ignore_errors=True)  # absent already: nothing to do
    log.info("cleanup: %d programs detached, pins under %s removed", removed, settings.pin_dir)


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
