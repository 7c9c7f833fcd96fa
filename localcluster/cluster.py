"""The local cluster's verbs: up, apply, delete, label, status (down lives in teardown).

Each mutating verb holds the store lock for its whole run: it admits the objects into a copy of
the store (pure, localcluster.admission), makes the kernel and processes match (pods), and only
then commits the copy. A failure part-way undoes what this call started and leaves the store as it
was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from api import ambient
from api.objects import Obj, ObjectRef, ref_of, validate
from controller.ca import nodeauth
from localcluster import admission, naming, pods, system, teardown, waypoints
from localcluster import netns as kernel
from localcluster.store import ClusterInfo, ClusterStore, ObjectSet
from localcluster.topology import NodePlan, plan_nodes
from node_agent.attach import ZTUNNEL_SYSCTLS

Progress = Callable[[str], None]
ZTUNNEL_HOST_IF = "ztunnel"
CAPTURE_TIMEOUT_S = 10.0
DEFAULT_NODES = 2


class ClusterError(RuntimeError):
    """A verb cannot be carried out; the message is the one-line reason."""


def _quiet(_: str) -> None:
    pass


class Cluster:
    def __init__(self, name: str, progress: Progress = _quiet) -> None:
        if reason := naming.check_cluster_name(name):
            raise ClusterError(reason)
        self.name = name
        self.store = ClusterStore(name)
        self.progress = progress

    def nodes(self) -> list[NodePlan]:
        return plan_nodes(self.store.info().nodes)

    # --- up -----------------------------------------------------------------------------------

    def up(self, nodes: int | None, settings: dict[str, Any] | None = None) -> float:
        """Build (or repair) the cluster; return the seconds it took. `settings` (trust domain,
        workload certificate TTL) apply to a new cluster only."""
        started = time.monotonic()
        with self.store.locked():
            if self.store.exists():
                have = self.store.info().nodes
                if nodes is not None and nodes != have:
                    raise ClusterError(
                        f"cluster {self.name!r} exists with {have} nodes; run 'ambientctl down "
                        f"--cluster {self.name}' first to change it"
                    )
                nodes = have
            count = DEFAULT_NODES if nodes is None else nodes
            try:
                plans = plan_nodes(count)
            except ValueError as exc:
                raise ClusterError(str(exc)) from None
            self._build_topology(plans)
            if not self.store.exists():
                self.store.create(ClusterInfo(self.name, count, **(settings or {})))
                objects = self.store.read()
                admission.apply(objects, [admission.namespace_object("default")], plans)
                self.store.commit(objects)
            system.ensure_tokens(self.store, plans)
            self._start_system(plans)
            self._reconcile_pods(plans)
        return time.monotonic() - started

    def _start_system(self, plans: list[NodePlan]) -> None:
        comps = system.components(self.name, plans, self.store.info().ca_dir)
        system.ensure_running(self.store, comps)
        states = system.wait_ready(self.store, comps)
        for component in comps:
            self.progress(f"{component.name:10} {states[component.name]} (netns {component.netns})")
        if not_ready := [name for name, state in states.items() if state != "Ready"]:
            raise ClusterError(
                f"not ready after {system.READY_TIMEOUT_S:.0f}s: {', '.join(not_ready)} "
                f"(see: ambientctl logs {system.SYSTEM_NAMESPACE}/{not_ready[0]})"
            )

    def _build_topology(self, plans: list[NodePlan]) -> None:
        underlay = naming.underlay_netns(self.name)
        if not kernel.has_link(underlay, kernel.BRIDGE):
            kernel.build_underlay(underlay)
        self.progress(f"underlay   {underlay} (bridge {kernel.BRIDGE}, 172.18.0.0/16)")
        for plan in plans:
            node_ns = naming.node_netns(self.name, plan.name)
            zt_ns = naming.ztunnel_netns(self.name, plan.name)
            if not kernel.has_link(node_ns, "eth0"):
                kernel.remove(node_ns)  # half-built: start over (its pods are re-wired below)
                kernel.build_node(underlay, node_ns, plan, plans)
            if not kernel.has_link(zt_ns, "eth0"):
                kernel.wire_pod(
                    node_ns,
                    zt_ns,
                    host_if=ZTUNNEL_HOST_IF,
                    pod_ip=plan.ztunnel_ip,
                    gateway_ip=plan.gateway_ip,
                )
            # Before ztunnel starts (the node agent sets them too, as on Kubernetes).
            kernel.set_sysctls(zt_ns, ZTUNNEL_SYSCTLS)
            self.progress(
                f"{plan.name:10} {node_ns} (node IP {plan.node_ip}, pods {plan.pod_cidr}, "
                f"ztunnel netns {zt_ns} at {plan.ztunnel_ip})"
            )

    def _reconcile_pods(self, plans: list[NodePlan]) -> None:
        """Make every stored pod run; remove pod netns the store no longer knows."""
        by_name = {p.name: p for p in plans}
        objects = self.store.read()
        stored = objects.list("Pod")
        wanted = {pods.pod_ref(self.name, p).netns for p in stored}
        for name in teardown.cluster_netns(self.name):
            if "." in name and name not in wanted:
                kernel.kill_processes_in([name], grace_s=1.0)
                kernel.remove(name)
        for pod in stored:
            ref = pods.pod_ref(self.name, pod)
            if not kernel.has_link(ref.netns, "eth0"):
                pods.wire(by_name[pod["spec"]["nodeName"]], self.name, ref, pod)
            state = pods.phase(pods.observed(self.store, ref), netns_present=True)
            if pods.shim_pid(self.store, ref) is None and state not in ("Completed", "Error"):
                self._await_capture(objects, pod)
                self._start_pod(pod)
        if stored:
            self.progress(f"pods       {len(stored)} running")

    # --- apply / delete / label ---------------------------------------------------------------

    def apply(self, incoming: list[Obj]) -> list[admission.Change]:
        """Admit, wire new pods' netns, commit, then start containers — an enrolled pod only once
        its node agent has captured it (as a CNI ADD that waits for the agent), so even its first
        connection is redirected."""
        with self.store.locked():
            plans = self.nodes()
            objects = self.store.read().copy()
            changes = admission.apply(objects, incoming, plans)
            changes += self._deploy_waypoints(objects, plans)
            new_pods = [c.obj for c in changes if c.action == "created" and c.ref.kind == "Pod"]
            wired: list[pods.PodRef] = []
            try:
                for pod in new_pods:
                    ref = pods.pod_ref(self.name, pod)
                    wired.append(ref)
                    node = next(p for p in plans if p.name == pod["spec"]["nodeName"])
                    pods.wire(node, self.name, ref, pod)
            except (kernel.NetnsError, OSError) as exc:
                for ref in wired:
                    pods.stop(self.store, ref, grace_s=0)
                raise ClusterError(f"{exc} (nothing was applied)") from None
            self.store.commit(objects)
            self._stop_deleted(changes)
            for pod in new_pods:
                self._await_capture(objects, pod)
                self._start_pod(pod)
            return changes

    def _deploy_waypoints(
        self, objects: ObjectSet, plans: list[NodePlan]
    ) -> list[admission.Change]:
        """Istio's gateway controller, run inside the verb: a pod per waypoint Gateway, and
        none for a Gateway that is gone."""
        controller = system.controller_address(plans)
        pods_wanted = [validate(p) for p in waypoints.missing(objects, self.name, controller)]
        changes = admission.apply(objects, pods_wanted, plans)
        return changes + admission.delete(objects, waypoints.orphaned(objects), ignore_missing=True)

    def _start_pod(self, pod: Obj) -> None:
        """Its token first (a projected ServiceAccount token: the pod's own credential for the
        CA, bound to its uid), then its containers."""
        ref = pods.pod_ref(self.name, pod)
        key = self.store.pod_token_key_path.read_text().strip().encode()
        system.write_secret(
            self.store.pod_token_path(ref.namespace, ref.name),
            nodeauth.pod_token(key, pod["metadata"]["uid"]),
        )
        pods.start(self.store, ref, pod)

    def _stop_deleted(self, changes: list[admission.Change]) -> None:
        for change in changes:
            if change.ref.kind == "Pod" and change.action == "deleted":
                ref = pods.pod_ref(self.name, change.obj)
                grace = float(change.obj["spec"]["terminationGracePeriodSeconds"])
                pods.stop(self.store, ref, grace_s=grace)

    def _await_capture(self, objects: ObjectSet, pod: Obj) -> None:
        namespace = objects.get(ObjectRef("Namespace", "", pod["metadata"]["namespace"]))
        if not ambient.enrolled(pod, namespace):
            return
        uid, node = pod["metadata"]["uid"], pod["spec"]["nodeName"]
        deadline = time.monotonic() + CAPTURE_TIMEOUT_S
        while uid not in (status := system.agent_status(self.store, node)).get("captured", {}):
            if time.monotonic() > deadline:
                ref = pods.pod_ref(self.name, pod)
                why = status.get("pending", {}).get(pod["status"]["podIP"])
                raise ClusterError(
                    f"pod {ref} is enrolled but the node agent of {node} did not capture it "
                    f"within {CAPTURE_TIMEOUT_S:.0f}s{f' ({why})' if why else ''}; its "
                    f"containers were not started (fail closed). See: ambientctl logs "
                    f"{system.SYSTEM_NAMESPACE}/node-agent-{node}"
                )
            time.sleep(0.05)

    def delete(self, refs: list[ObjectRef], *, ignore_missing: bool) -> list[admission.Change]:
        with self.store.locked():
            objects = self.store.read().copy()
            changes = admission.delete(objects, refs, ignore_missing=ignore_missing)
            changes += admission.delete(objects, waypoints.orphaned(objects), ignore_missing=True)
            self.store.commit(objects)
            self._stop_deleted(changes)
            return changes

    def label(self, ref: ObjectRef, changes: dict[str, str | None], *, overwrite: bool) -> str:
        with self.store.locked():
            objects = self.store.read().copy()
            change = admission.label(objects, ref, changes, overwrite=overwrite)
            self.store.commit(objects)
            return change.action

    # --- read ---------------------------------------------------------------------------------

    def read(self) -> ObjectSet:
        return self.store.read()

    def pod_rows(self, objects: ObjectSet) -> list[dict[str, Any]]:
        rows = []
        agents: dict[str, dict[str, Any]] = {}
        for pod in objects.list("Pod"):
            node = pod["spec"]["nodeName"]
            if node not in agents:
                agents[node] = system.agent_status(self.store, node)
            agent = agents[node]
            ref = pods.pod_ref(self.name, pod)
            ns_obj = objects.get(ObjectRef("Namespace", "", ref.namespace))
            seen = pods.observed(self.store, ref)
            rows.append(
                {
                    "namespace": ref.namespace,
                    "name": ref.name,
                    "node": pod["spec"]["nodeName"],
                    "ip": pod["status"]["podIP"],
                    "serviceAccount": pod["spec"]["serviceAccountName"],
                    "labels": pod["metadata"].get("labels") or {},
                    "enrolled": ambient.enrolled(pod, ns_obj),
                    "redirected": pod["metadata"]["uid"] in agent.get("captured", {}),
                    # why the agent could not redirect it yet (F-13: `map_full`, ...)
                    "pending": agent.get("pending", {}).get(pod["status"]["podIP"], ""),
                    "status": pods.phase(seen, kernel.exists(ref.netns)),
                    "restarts": sum(c["restarts"] for c in seen["containers"].values()),
                    "netns": ref.netns,
                }
            )
        return rows

    def status(self) -> dict[str, Any]:
        """Nodes, pods and component health, with every netns name (for tcpdump / ip netns exec)."""
        objects = self.store.read()
        node_rows = []
        for plan in self.nodes():
            node_ns = naming.node_netns(self.name, plan.name)
            zt_ns = naming.ztunnel_netns(self.name, plan.name)
            healthy = kernel.has_link(node_ns, "eth0") and kernel.has_link(zt_ns, "eth0")
            node_rows.append(
                {
                    "name": plan.name,
                    "ip": plan.node_ip,
                    "podCIDR": plan.pod_cidr,
                    "netns": node_ns,
                    "ztunnelNetns": zt_ns,
                    "ztunnelIP": plan.ztunnel_ip,
                    "ready": healthy,
                }
            )
        info = self.store.info()
        return {
            "cluster": self.name,
            "trustDomain": info.trust_domain,
            "revision": objects.revision,
            "underlayNetns": naming.underlay_netns(self.name),
            "nodes": node_rows,
            "pods": self.pod_rows(objects),
            "network": "ok" if all(n["ready"] for n in node_rows) else "degraded",
            "components": system.status(self.store, system.components(self.name, self.nodes())),
            "config": system.config_status(self.name, self.nodes()),
        }

    def find(self, kind: str, namespace: str, name: str) -> Obj:
        ref = ObjectRef(kind, namespace if kind != "Namespace" else "", name)
        obj = self.store.read().get(ref)
        if obj is None:
            raise ClusterError(f"{ref} not found")
        return obj


def refs_of(objects: list[Obj]) -> list[ObjectRef]:
    return [ref_of(o) for o in objects]
