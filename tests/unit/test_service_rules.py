"""The local cluster's kube-proxy rules (localcluster/servicerules.py): which VIP:port leads
where, and the nftables text for it (applied for real in tests/e2e/test_service_proxy.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcluster import serviceproxy
from localcluster.servicerules import ServicePort, carried_affinity, ruleset, service_ports
from localcluster.store import ClusterStore, StoreWatcher
from tests.unit.config.test_compile import ns, objects, pod


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.11", "selector": {"app": "web"}, **spec},
    }


WEB = [
    ns("demo"),
    pod("a", "node1", "10.244.1.3", app="web"),
    pod("b", "node2", "10.244.2.3", app="web"),
    pod("pending", "node1", None, app="web"),  # no IP yet: not an endpoint
    pod("db", "node2", "10.244.2.4", app="db"),
]


def test_ready_endpoints_of_each_port() -> None:
    ports = [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP"}]
    found = service_ports(objects(*WEB, service("web", ports=ports)))
    backends = (("10.244.1.3", 8080), ("10.244.2.3", 8080))
    assert found == [
        ServicePort(
            "demo_web_53", "10.96.0.11", 53, "udp", (("10.244.1.3", 53), ("10.244.2.3", 53))
        ),
        ServicePort("demo_web_80", "10.96.0.11", 80, "tcp", backends),
    ]


def test_an_unready_pod_is_no_endpoint() -> None:
    unready = pod("c", "node1", "10.244.1.9", app="web")
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    found = service_ports(objects(*WEB, unready, service("web", ports=[{"port": 80}])))
    assert [ip for ip, _ in found[0].backends] == ["10.244.1.3", "10.244.2.3"]


def test_session_affinity_and_its_timeout() -> None:
    default = service("web", ports=[{"port": 80}], sessionAffinity="ClientIP")
    assert service_ports(objects(*WEB, default))[0].affinity_s == 10800
    config = {"clientIP": {"timeoutSeconds": 60}}
    short = service(
        "web", ports=[{"port": 80}], sessionAffinity="ClientIP", sessionAffinityConfig=config
    )
    assert service_ports(objects(*WEB, short))[0].affinity_s == 60


def test_headless_services_and_named_target_ports_get_no_rule() -> None:
    headless = service("web", clusterIP="None", ports=[{"port": 80}])
    named = service("named", ports=[{"port": 80, "targetPort": "http"}])
    assert service_ports(objects(*WEB, headless)) == []
    assert service_ports(objects(*WEB, named)) == []


def test_the_ruleset_replaces_the_table_in_one_transaction() -> None:
    text = ruleset([ServicePort("demo_web_80", "10.96.0.11", 80, "tcp", (("10.244.1.3", 8080),))])
    lines = text.splitlines()
    assert lines[:3] == [
        "table ip ambientmesh-services {}",
        "delete table ip ambientmesh-services",
        "table ip ambientmesh-services {",
    ]
    dispatch = (
        "ip daddr . meta l4proto . th dport vmap { 10.96.0.11 . tcp . 80 : goto svc-demo_web_80 }"
    )
    assert f"    {dispatch}" in lines
    assert "    meta l4proto tcp dnat to 10.244.1.3:8080" in lines
    assert "    ip saddr 10.244.1.3 meta mark set meta mark | 0x4000" in lines  # hairpin


def test_a_port_without_endpoints_is_rejected_not_blackholed() -> None:
    text = ruleset([ServicePort("demo_web_80", "10.96.0.11", 80, "tcp", ())])
    assert "    ip daddr . meta l4proto . th dport { 10.96.0.11 . tcp . 80 } reject" in text
    assert "vmap" not in text


def test_affinity_sets_come_before_the_chains_that_use_them() -> None:
    port = ServicePort("s", "10.96.0.11", 80, "tcp", (("10.244.1.3", 80), ("10.244.2.3", 80)), 60)
    text = ruleset([port])
    assert text.index("set aff-s-1 {") < text.index("ip saddr @aff-s-1 goto ep-s-1")
    assert "    update @aff-s-0 { ip saddr }" in text
    assert "    timeout 60s;" in text


def _listing(*sets: tuple[str, list[Any]]) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    items += [{"set": {"name": n, "table": "ambientmesh-services", "elem": e}} for n, e in sets]
    return {"nftables": items}


def test_live_affinity_entries_are_carried_into_the_new_table() -> None:
    port = ServicePort("s", "10.96.0.11", 80, "tcp", (("10.244.1.3", 80), ("10.244.2.3", 80)), 60)
    new_text = ruleset([port])
    live = {"elem": {"val": "10.244.1.9", "timeout": 60, "expires": 41}}
    expired = {"elem": {"val": "10.244.1.8", "timeout": 60, "expires": 0}}
    # What `update @set { ip saddr }` adds: no timeout of its own (regression: a KeyError
    # crashed the proxy on the first rewrite after a client had been pinned).
    updated = {"elem": {"val": "10.244.1.7", "expires": 30}}
    listing = _listing(
        ("aff-s-0", [live, expired, "10.244.1.6"]), ("aff-gone-0", [live]), ("aff-s-1", [updated])
    )
    listing["nftables"][3]["set"]["timeout"] = 60
    assert carried_affinity(listing, new_text) == [
        "add element ip ambientmesh-services aff-s-0 { 10.244.1.9 timeout 60s expires 41s }",
        "add element ip ambientmesh-services aff-s-1 { 10.244.1.7 timeout 60s expires 30s }",
    ]


class _FakeKernel:
    def __init__(self) -> None:
        self.table = ""
        self.applies = 0

    def apply(self, text: str) -> str:
        self.applies += 1
        self.table = text
        return "listing of " + text

    def listing(self, **_: Any) -> str:
        return "listing of " + self.table if self.table else ""


def test_the_proxy_rewrites_only_on_change_or_drift(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = _FakeKernel()
    monkeypatch.setattr(serviceproxy, "apply_rules", kernel.apply)
    monkeypatch.setattr(serviceproxy, "listing", kernel.listing)
    watcher = StoreWatcher(ClusterStore("unused", root=tmp_path))
    watcher.current = objects(*WEB, service("web", ports=[{"port": 80}]))
    proxy = serviceproxy.ServiceProxy(watcher.store, tmp_path / "status.json")
    proxy.sync(watcher)
    proxy.sync(watcher, check_drift=True)
    assert kernel.applies == 1  # nothing changed, nothing drifted
    kernel.table = "flushed by someone"
    proxy.sync(watcher)
    assert kernel.applies == 1  # a revision without changes does not look
    proxy.sync(watcher, check_drift=True)
    assert kernel.applies == 2 and "dnat to 10.244.1.3:80" in kernel.table
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["ready"] and status["servicePorts"] == 1 and status["lastError"] == ""


def test_a_refused_ruleset_keeps_the_previous_and_is_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_text: str) -> str:
        raise serviceproxy.NftError("Error: Could not process rule: No such file or directory")

    monkeypatch.setattr(serviceproxy, "apply_rules", refuse)
    watcher = StoreWatcher(ClusterStore("unused", root=tmp_path))
    proxy = serviceproxy.ServiceProxy(watcher.store, tmp_path / "status.json")
    proxy.sync(watcher)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status == {
        "ready": False,
        "revision": 0,
        "servicePorts": 0,
        "failures": 1,
        "lastError": "Error: Could not process rule: No such file or directory",
    }
