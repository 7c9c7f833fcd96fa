"""The node agent's reconcile loop: the kernel datapath kept in step with the cluster.

- Start: take the node's writer lock (a second agent — rolling update — waits for it), compile
  the programs (pinned maps are reused, so state survives restarts), *replace* the programs on
  ztunnel's eth0 and on every enrolled pod's veth, configure ztunnel's local routing.
- Loop: enroll pods of this node whose namespace or pod label says ambient (attach pod_out/pod_in
  on the host veth found by route lookup, or route + neighbour + bridge FDB for bridged CNIs;
  then add the map entry); un-enroll the rest (map
  entry first, then detach). A pod whose IP now belongs to another pod (UID changed) is redone.
- Drift: every `drift_interval_s`, filters and map entries are checked and repaired, counted.
- Exit: never detaches anything (the datapath keeps working while the agent is away).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from api import ports
from api.ambient import enrolled
from api.objects import ObjectRef
from bpf.loader import Datapath, compile_datapath, remove_other_versions
from localcluster import netns as kernel
from localcluster.pods import RESERVED_PORTS_SYSCTL
from localcluster.store import ObjectSet
from node_agent import attach, bpffs, discover
from node_agent.attach import EGRESS, INGRESS, Hook

log = logging.getLogger("node_agent")


@dataclass(frozen=True)
class AgentSettings:
    node: str
    """Node whose pods this agent serves."""
    ztunnel_netns: str
    """Network namespace of the node's ztunnel."""
    pin_dir: Path
    """bpffs directory for this node's maps."""
    run_dir: Path
    """Lock and status files."""
    ztunnel_host_if: str = "ztunnel"
    """ztunnel's host-side veth in the node netns; "" finds it from ztunnel's IP (Kubernetes,
    any CNI)."""
    drift_interval_s: float = 2.0
    """How often attached filters and map entries are verified."""
    reserve_pod_ports: bool = False
    """Reserve ztunnel's ports in each captured pod's netns (Kubernetes; the local cluster
    does it when it wires a pod)."""


@dataclass
class Captured:
    uid: str
    ip: str
    ifindex: int
    name: str


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.enrolled = Gauge("ambientmesh_node_agent_enrolled_pods", "Pods redirected", registry=r)
        self.reconciles = Counter(
            "ambientmesh_node_agent_reconciles", "Reconcile passes", registry=r
        )
        self.errors = Counter(
            "ambientmesh_node_agent_reconcile_errors",
            "Failed pod operations",
            ["reason"],
            registry=r,
        )
        self.duration = Gauge(
            "ambientmesh_node_agent_reconcile_seconds", "Duration of the last reconcile", registry=r
        )
        self.drift = Counter(
            "ambientmesh_node_agent_drift_repairs", "Repairs of removed state", ["kind"], registry=r
        )
        self.verdicts = Gauge(
            "ambientmesh_datapath_verdicts", "Datapath packets by verdict", ["verdict"], registry=r
        )
        self.pending = Gauge(
            "ambientmesh_node_agent_pending_pods",
            "Enrolled pods of the node not redirected yet (retried every drift interval)",
            registry=r,
        )


def desired_pods(objects: ObjectSet, node: str) -> dict[str, Mapping[str, Any]]:
    """IP → pod, for this node's enrolled pods (pure)."""
    out: dict[str, Mapping[str, Any]] = {}
    for pod in objects.list("Pod"):
        if pod["spec"].get("nodeName") != node or not pod.get("status", {}).get("podIP"):
            continue
        if pod["spec"].get("hostNetwork"):
            continue  # the node's own address: capturing it would capture the node
        namespace = objects.get(ObjectRef("Namespace", "", pod["metadata"]["namespace"]))
        if enrolled(pod, namespace):
            out[pod["status"]["podIP"]] = pod
    return out


class Agent:
    def __init__(self, settings: AgentSettings, metrics: AgentMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.datapath: Datapath | None = None
        self.captured: dict[str, Captured] = {}
        # Pods the last reconcile could not capture, with why: retried (`retry_due`), shown in
        # the status and counted (F-13: a full map is surfaced, never silently dropped).
        self.pending: dict[str, str] = {}
        self.ready = False
        self.problem = ""  # why the agent cannot start (F-13: no bpffs, a load failure), if so
        self._lock_file: Any = None
        self._last_drift = 0.0
        self._last_retry = 0.0
        self._zt_deferred = False  # ztunnel's program waits for the first reconcile (F-15)

    # --- start --------------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """One writer per node (F-14): a second agent waits here until the first exits."""
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = (self.settings.run_dir / "agent.lock").open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another agent owns node %s: waiting for its lock", self.settings.node)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)

    def start(self) -> None:
        bpffs.ensure(self.settings.pin_dir)
        self.datapath = compile_datapath(self.settings.pin_dir)
        if removed := remove_other_versions(self.settings.pin_dir):
            # F-15: an agent of another map version ran before. Its programs keep its maps
            # until replaced; ztunnel's is replaced only after the first reconcile has filled
            # this version's map, or it would find no pod enrolled in the meantime.
            log.info("unpinned the maps of another version: %s", ", ".join(removed))
            self._zt_deferred = True
        self._setup_ztunnel(attach_program=not self._zt_deferred)
        for ip, ifindex in self.datapath.enrolled_ips().items():
            # Pinned state from before a restart: replace the programs on those veths now, so
            # they run the code of this agent, without a gap.
            try:
                self._attach_pod(ifindex)
            except OSError as exc:  # F-2: the pod went while no agent ran (its veth with it)
                self.datapath.unenroll(ip)
                self.metrics.errors.labels(reason="stale_pinned_pod").inc()
                log.warning("pinned pod %s (ifindex %d) is gone: %s; released", ip, ifindex, exc)
                continue
            self.captured[ip] = Captured("", ip, ifindex, "")
        log.info(
            "datapath ready on %s (%d pods from pinned state)",
            self.settings.node,
            len(self.captured),
        )

    def _zt_hook(self) -> Hook:
        eth0 = attach.ifindex_of(self.settings.ztunnel_netns, "eth0")
        if eth0 is None:
            raise RuntimeError(f"{self.settings.ztunnel_netns} has no eth0")
        return Hook(self.settings.ztunnel_netns, eth0, INGRESS, "zt_in")

    def _setup_ztunnel(self, *, attach_program: bool = True) -> None:
        assert self.datapath is not None
        with attach._ipr(self.settings.ztunnel_netns) as ipr:
            zt_ip = ipr.get_addr(label="eth0")[0].get_attr("IFA_ADDRESS")
        zt_host = (
            attach.ifindex_of(None, self.settings.ztunnel_host_if)
            if self.settings.ztunnel_host_if
            else attach.pod_veth(zt_ip)
        )
        if zt_host is None:
            raise RuntimeError(f"no host veth for ztunnel ({zt_ip}) on this node")
        self.datapath.configure(
            zt_ifindex=zt_host,
            zt_ip=zt_ip,
            zt_mac=attach.mac_of(self.settings.ztunnel_netns, "eth0"),
            mark=attach.MARK,
        )
        attach.ensure_local_routing(self.settings.ztunnel_netns)
        kernel.set_sysctls(self.settings.ztunnel_netns, attach.ZTUNNEL_SYSCTLS)
        if attach_program:
            attach.attach(self._zt_hook(), self.datapath.fds["zt_in"])

    def _attach_pod(self, ifindex: int) -> None:
        assert self.datapath is not None
        attach.attach(Hook(None, ifindex, INGRESS, "pod_out"), self.datapath.fds["pod_out"])
        attach.attach(Hook(None, ifindex, EGRESS, "pod_in"), self.datapath.fds["pod_in"])

    # --- reconcile ------------------------------------------------------------------------------

    def reconcile(self, objects: ObjectSet) -> None:
        assert self.datapath is not None
        started = time.monotonic()
        want = desired_pods(objects, self.settings.node)
        for ip in list(self.captured):
            pod = want.get(ip)
            current = self.captured[ip]
            if pod is None or (current.uid and current.uid != pod["metadata"]["uid"]):
                self._release(ip)
        new = {
            ip: pod
            for ip, pod in want.items()
            if ip not in self.captured or not self.captured[ip].uid
        }
        holders = (
            discover.netns_holding_all(set(new)) if new and self.settings.reserve_pod_ports else {}
        )
        self.pending.clear()
        for ip, pod in new.items():
            problem = self._capture(ip, pod, holders.get(ip))
            if problem:
                self.pending[ip] = problem
        self.metrics.reconciles.inc()
        self.metrics.enrolled.set(len(self.captured))
        self.metrics.pending.set(len(self.pending))
        if self._zt_deferred:
            attach.attach(self._zt_hook(), self.datapath.fds["zt_in"])
            self._zt_deferred = False
        self.metrics.duration.set(time.monotonic() - started)
        self.ready = True

    def _capture(self, ip: str, pod: Mapping[str, Any], netns: str | None = None) -> str:
        """Returns "" once captured, else the reason (counted and logged).
        `netns`: the pod's network namespace, when ztunnel's ports are to be reserved in it."""
        assert self.datapath is not None
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        ifindex = attach.pod_veth(ip)
        if ifindex is None:
            log.warning("pod %s (%s): no route to its veth; not enrolled yet", name, ip)
            return self._not_captured("veth_not_found")
        try:
            # The map entry first: programs that replace those of an agent of another map
            # version (F-15) find it at once, so the pod's traffic is never let through
            # between them. Without programs on its veth yet, the entry changes nothing.
            self.datapath.enroll(ip, ifindex)
            try:
                self._attach_pod(ifindex)
            except (OSError, RuntimeError):
                self.datapath.unenroll(ip)
                raise
        except (OSError, RuntimeError) as exc:
            log.error("pod %s (%s): %s", name, ip, exc)  # noqa: TRY400 - one line per pod
            full = isinstance(exc, OSError) and exc.errno in (errno.E2BIG, errno.ENOSPC)
            return self._not_captured("map_full" if full else "attach_failed")
        self.captured[ip] = Captured(pod["metadata"]["uid"], ip, ifindex, name)
        log.info("enrolled %s (%s, ifindex %d)", name, ip, ifindex)
        if self.settings.reserve_pod_ports:
            self._reserve_ports(netns, name)
        return ""

    def _not_captured(self, reason: str) -> str:
        self.metrics.errors.labels(reason=reason).inc()
        return reason

    def _reserve_ports(self, netns: str | None, name: str) -> None:
        """Keep ztunnel's ports out of the pod's ephemeral range (`ports.POD_RESERVED_PORTS`),
        as Istio's CNI does. Best effort: failures are counted and logged."""
        problem = "no process holds its network namespace" if netns is None else ""
        if netns is not None:
            try:
                kernel.set_sysctls(netns, {RESERVED_PORTS_SYSCTL: ports.POD_RESERVED_PORTS})
            except OSError as exc:
                problem = str(exc)
        if problem:
            self.metrics.errors.labels(reason="reserve_ports_failed").inc()
            log.warning("pod %s: cannot reserve ztunnel's ports: %s", name, problem)

    def _release(self, ip: str) -> None:
        assert self.datapath is not None
        gone = self.captured.pop(ip)
        self.datapath.unenroll(ip)  # map entry first: the programs pass from now on
        attach.detach(Hook(None, gone.ifindex, INGRESS, "pod_out"))
        attach.detach(Hook(None, gone.ifindex, EGRESS, "pod_in"))
        log.info("un-enrolled %s (%s)", gone.name or ip, ip)

    # --- drift ----------------------------------------------------------------------------------

    def retry_due(self) -> bool:
        """Pending pods are retried at the drift interval: a full map may have room again."""
        now = time.monotonic()
        if not self.pending or now - self._last_retry < self.settings.drift_interval_s:
            return False
        self._last_retry = now
        return True

    def check_drift(self, force: bool = False) -> int:
        """Repair what someone else removed or changed (F-3): ztunnel's and the pods' filters,
        the pods' map entries; returns the number of repairs."""
        assert self.datapath is not None
        now = time.monotonic()
        if not force and now - self._last_drift < self.settings.drift_interval_s:
            return 0
        self._last_drift = now
        repairs = 0
        if not self._zt_deferred and attach.attached_name(self._zt_hook()) != "zt_in":
            self._setup_ztunnel()
            self.metrics.drift.labels(kind="ztunnel_filter").inc()
            repairs += 1
        in_map = self.datapath.enrolled_ips()
        for ip, c in self.captured.items():
            hooks = (
                Hook(None, c.ifindex, INGRESS, "pod_out"),
                Hook(None, c.ifindex, EGRESS, "pod_in"),
            )
            if any(attach.attached_name(h) != h.name for h in hooks):
                try:
                    self._attach_pod(c.ifindex)
                except OSError as exc:  # its veth went with the pod: the next reconcile releases it
                    self.metrics.errors.labels(reason="repair_failed").inc()
                    log.warning("pod %s (%s): cannot repair: %s", c.name or ip, ip, exc)
                    continue
                self.metrics.drift.labels(kind="pod_filter").inc()
                repairs += 1
            if in_map.get(ip) != c.ifindex:  # removed, or changed behind our back
                try:
                    self.datapath.enroll(ip, c.ifindex)
                except OSError as exc:  # the map filled up meanwhile (someone else's entries)
                    self.metrics.errors.labels(reason="repair_failed").inc()
                    log.warning("pod %s (%s): cannot repair: %s", c.name or ip, ip, exc)
                    continue
                self.metrics.drift.labels(kind="map_entry").inc()
                repairs += 1
        if repairs:
            log.warning("repaired %d pieces of removed datapath state", repairs)
        return repairs

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        verdicts = self.datapath.verdicts() if self.datapath else {}
        for name, value in verdicts.items():
            self.metrics.verdicts.labels(verdict=name).set(value)
        return {
            "node": self.settings.node,
            "ready": self.ready,
            "problem": self.problem,
            "pending": dict(self.pending),
            "captured": {
                c.uid: {"ip": c.ip, "ifindex": c.ifindex, "pod": c.name}
                for c in self.captured.values()
                if c.uid
            },
            "verdicts": verdicts,
        }

    def write_status(self) -> None:
        path = self.settings.run_dir / "status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        tmp.replace(path)
