"""What kube-proxy's nftables mode would program for the local cluster's Services (pure).

A real cluster always load-balances Service VIPs for every pod; the local cluster has no
kube-proxy, so each node netns gets this ruleset (localcluster/serviceproxy.py applies it):
- prerouting (DNAT): a ClusterIP:port goes to one of its ready endpoints, picked at random
  (`numgen random`), or to the one a client was last sent to while `sessionAffinity: ClientIP`
  holds (a dynamic set per endpoint, `timeoutSeconds`, 10800 by default as Kubernetes');
- a VIP:port with no ready endpoint is rejected (ICMP port unreachable), as kube-proxy does;
- a pod that reaches itself through its Service (hairpin) is masqueraded.
A rewrite replaces the table atomically and carries the affinity sets' live entries over
(`carried_affinity`), so a change elsewhere does not move a client to another endpoint.
Enrolled pods' TCP never gets here: their node agent's tc program steers it into the ztunnel
before netfilter sees it (DESIGN "Traffic path"); the ztunnel balances VIPs itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from api.meshconfig import key_of
from controller.config.compile import workloads_and_services
from localcluster.store import ObjectSet

TABLE = "ambientmesh-services"
MASQUERADE_MARK = 0x4000  # kube-proxy's masquerade bit
DEFAULT_AFFINITY_S = 10800  # Kubernetes' sessionAffinityConfig.clientIP.timeoutSeconds default


@dataclass(frozen=True)
class ServicePort:
    """One VIP:port of a Service and where it leads."""

    name: str  # chain-safe: namespace_name_port
    vip: str
    port: int
    protocol: str  # tcp | udp
    backends: tuple[tuple[str, int], ...]  # (pod IP, target port), ready endpoints only
    affinity_s: int = 0  # ClientIP affinity timeout; 0: none


def service_ports(objects: ObjectSet) -> list[ServicePort]:
    """Every ClusterIP port, its backends from the same endpoint selection the ztunnels use
    (ready pods with an IP that the selector matches). Named target ports are skipped, as the
    ztunnels skip them (not resolved yet)."""
    resources = {key_of(r): r for r in workloads_and_services(objects)[0]}
    ips = {r["uid"]: r["ip"] for r in resources.values() if r["type"] == "workload"}
    out = []
    for svc in objects.list("Service"):
        meta, spec = svc["metadata"], svc.get("spec") or {}
        vip = spec.get("clusterIP")
        if not vip or vip == "None":
            continue
        res = resources[f"service/{meta['namespace']}/{meta['name']}"]
        endpoints = sorted(ips[uid] for uid in res["endpoints"] if uid in ips)
        affinity = 0
        if spec.get("sessionAffinity") == "ClientIP":
            config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
            affinity = int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_S)
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port["port"])
            if not isinstance(target, int):
                continue
            out.append(
                ServicePort(
                    f"{meta['namespace']}_{meta['name']}_{port['port']}",
                    vip,
                    port["port"],
                    str(port.get("protocol", "TCP")).lower(),
                    tuple((ip, target) for ip in endpoints),
                    affinity,
                )
            )
    return sorted(out, key=lambda p: (p.vip, p.port, p.protocol))


def ruleset(ports: Iterable[ServicePort]) -> str:
    """The table, as one `nft -f` transaction that replaces the previous one atomically."""
    ports = list(ports)
    served = [p for p in ports if p.backends]
    lines = [
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *([f"    ip daddr . meta l4proto . th dport vmap {{ {_vmap(served)} }}"] if served else []),
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} masquerade",
        "  }",
        "  chain no-endpoints {",
        "    type filter hook prerouting priority dstnat - 10; policy accept;",
        *_rejects([p for p in ports if not p.backends]),
        "  }",
    ]
    for p in served:
        lines += _service_chains(p)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _key(p: ServicePort) -> str:
    return f"{p.vip} . {p.protocol} . {p.port}"


def _vmap(served: list[ServicePort]) -> str:
    return ", ".join(f"{_key(p)} : goto svc-{p.name}" for p in served)


def _rejects(empty: list[ServicePort]) -> list[str]:
    if not empty:
        return []
    return [f"    ip daddr . meta l4proto . th dport {{ {', '.join(map(_key, empty))} }} reject"]


def _service_chains(p: ServicePort) -> list[str]:
    count = len(p.backends)
    picks = ", ".join(f"{i} : goto ep-{p.name}-{i}" for i in range(count))
    lines = []
    if p.affinity_s:  # sets before the chains that use them
        for i in range(count):
            lines += [
                f"  set aff-{p.name}-{i} {{",
                "    type ipv4_addr; flags dynamic,timeout;",
                f"    timeout {p.affinity_s}s;",
                "  }",
            ]
    lines.append(f"  chain svc-{p.name} {{")
    if p.affinity_s:
        lines += [f"    ip saddr @aff-{p.name}-{i} goto ep-{p.name}-{i}" for i in range(count)]
    lines += [f"    numgen random mod {count} vmap {{ {picks} }}", "  }"]
    for i, (ip, target) in enumerate(p.backends):
        lines += [
            f"  chain ep-{p.name}-{i} {{",
            f"    ip saddr {ip} meta mark set meta mark | {MASQUERADE_MARK:#x}",
            *([f"    update @aff-{p.name}-{i} {{ ip saddr }}"] if p.affinity_s else []),
            f"    meta l4proto {p.protocol} dnat to {ip}:{target}",
            "  }",
        ]
    return lines


def carried_affinity(listing: Mapping[str, Any], new_text: str) -> list[str]:
    """`add element` commands that put the live ClientIP affinity entries of `listing` (the
    table's sets, as libnftables' JSON lists them) into the same-named sets of `new_text`,
    with the time they have left."""
    out = []
    for item in listing.get("nftables", []):
        found = item.get("set")
        if not found or not str(found.get("name", "")).startswith("aff-"):
            continue
        name = found["name"]
        if f"  set {name} {{" not in new_text:
            continue  # that endpoint is gone
        elems = []
        for entry in found.get("elem", []):
            elem = entry.get("elem", {}) if isinstance(entry, Mapping) else {}
            # An entry `update` added has no timeout of its own: the set's applies.
            timeout, expires = elem.get("timeout", found.get("timeout")), elem.get("expires")
            live = isinstance(expires, int) and expires > 0
            if isinstance(elem.get("val"), str) and isinstance(timeout, int) and live:
                elems.append(f"{elem['val']} timeout {timeout}s expires {expires}s")
        if elems:
            out.append(f"add element ip {TABLE} {name} {{ {', '.join(elems)} }}")
    return out
