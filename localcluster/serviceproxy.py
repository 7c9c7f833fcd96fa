"""The local cluster's kube-proxy: one per node, in the node's netns, keeping its nftables
Service rules (localcluster/servicerules.py) in step with the store.

Each store revision that changes the rules is applied as one libnftables transaction (Debian's
python3-nftables: the same library `nft` is built on), so a failed apply leaves the previous
rules in place; the failure is logged once, counted and reported in its status file, and the
next revision is tried again. Real clusters have their own kube-proxy: this runs only under
`ambientctl up`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from localcluster import naming
from localcluster.servicerules import TABLE, carried_affinity, ruleset, service_ports
from localcluster.store import ClusterStore, StoreWatcher

log = logging.getLogger("serviceproxy")

POLL_S = 0.05  # as the local source: a stat() per poll
# kube-proxy's --sync-period default: this often the kernel's rules are compared with ours, so
# a table someone flushed or edited is repaired.
RESYNC_S = 30.0
STATUS_FILE = "serviceproxy.json"


class NftError(RuntimeError):
    """libnftables refused a ruleset."""


def _nft(command: str, *, json_output: bool = False, terse: bool = False) -> str:
    import nftables  # noqa: PLC0415 - Debian's module; only the process that applies needs it

    nft = nftables.Nftables()
    nft.set_json_output(json_output)
    nft.set_terse_output(terse)
    rc, out, err = nft.cmd(command)
    if rc != 0:
        raise NftError(err.strip().splitlines()[0] if err.strip() else f"nft exit {rc}")
    return str(out)


def listing(*, json_output: bool = False) -> str:
    """The table as the kernel holds it (terse: without set contents), or "" if it is gone."""
    try:
        return _nft(f"list table ip {TABLE}", json_output=json_output, terse=not json_output)
    except NftError:
        return ""


def apply_rules(text: str) -> str:
    """Replace the table with `text`, keeping live affinity entries; the new terse listing."""
    current = listing(json_output=True)
    try:
        carried = carried_affinity(json.loads(current), text) if current else []
    except (ValueError, TypeError, AttributeError) as exc:  # a listing we cannot read
        log.warning("affinity entries not carried over: %s", exc)
        carried = []
    _nft(text + "".join(f"{line}\n" for line in carried))
    return listing()


@dataclass
class ServiceProxy:
    store: ClusterStore
    status_path: Path
    applied: str = ""
    kernel_view: str = ""  # the terse listing right after our apply: drift is a difference
    revision: int = 0
    services: int = 0
    failures: int = 0
    last_error: str = ""

    def sync(self, watcher: StoreWatcher, *, check_drift: bool = False) -> None:
        """Apply the current revision's rules when they differ from the applied ones, or
        (`check_drift`, the periodic resync) when the kernel's differ from what we applied."""
        objects = watcher.current
        ports = service_ports(objects)
        text = ruleset(ports)
        drifted = check_drift and listing() != self.kernel_view
        if drifted and text == self.applied:
            log.warning("the rules were changed behind our back: rewriting them")
        if drifted or text != self.applied:
            try:
                self.kernel_view = apply_rules(text)
            except (NftError, OSError) as exc:
                self.failures += 1
                if str(exc) != self.last_error:
                    log.warning("keeping the previous rules: %s", exc)
                self.last_error = str(exc)
                self.write_status()
                return
            if text != self.applied:
                log.info("revision %d: %d service ports", objects.revision, len(ports))
            self.applied, self.last_error = text, ""
        self.revision, self.services = objects.revision, len(ports)
        self.write_status()

    def write_status(self) -> None:
        status: dict[str, Any] = {
            "ready": bool(self.applied),
            "revision": self.revision,
            "servicePorts": self.services,
            "failures": self.failures,
            "lastError": self.last_error,
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(self.status_path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localcluster.serviceproxy")
    parser.add_argument("--cluster", default=naming.DEFAULT_CLUSTER)
    parser.add_argument("--node", required=True)
    parser.add_argument("--run-dir", type=Path, help="where the status file goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = ClusterStore(args.cluster)
    run_dir = args.run_dir or store.system_dir(f"service-proxy-{args.node}")
    run_dir.mkdir(parents=True, exist_ok=True)
    proxy = ServiceProxy(store, run_dir / STATUS_FILE)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    watcher = StoreWatcher(store)
    synced_at = -RESYNC_S
    while not stop.is_set():
        changed = watcher.poll()
        due = time.monotonic() - synced_at >= RESYNC_S
        if changed or due:
            proxy.sync(watcher, check_drift=due)
            synced_at = time.monotonic() if due else synced_at
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
