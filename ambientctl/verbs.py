"""The verbs behind `ambientctl`: read arguments, call the cluster, print kubectl-like output."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ambientctl import output
from api import load_manifest
from api.errors import ManifestError, ObjectError
from api.objects import KINDS, Obj, ObjectRef
from api.schema import crd_names
from api.spiffe import check_trust_domain
from localcluster import naming, system, teardown
from localcluster.admission import parse_label_changes
from localcluster.cluster import Cluster, ClusterError, refs_of

# kubectl's names and short names for the kinds we serve (the CRDs' own for Istio's kinds).
_ALIASES = {
    **{k.plural: k.name for k in KINDS.values()},
    **{k.name.lower(): k.name for k in KINDS.values()},
    **crd_names(),
    "policies": "AuthorizationPolicy",  # what `get --help` offers: Istio's authorization policies
    "gtw": "Gateway",  # the Gateway API CRD's short name
    "po": "Pod",
    "ns": "Namespace",
    "svc": "Service",
    "cm": "ConfigMap",
    "nodes": "Node",
    "node": "Node",
    "no": "Node",
}


def _kind(word: str) -> str:
    kind = _ALIASES.get(word.lower())
    if kind is None:
        raise ClusterError(f"unknown resource type {word!r}")
    return kind


def _cluster(args: argparse.Namespace, *, verbose: bool = False) -> Cluster:
    return Cluster(args.cluster, progress=_step if verbose else lambda _: None)


def _step(message: str) -> None:
    print(f" ✓ {message}", flush=True)


def _read_sources(sources: list[str]) -> list[Obj]:
    objects: list[Obj] = []
    for source in sources:
        paths = [source]
        if source != "-" and Path(source).is_dir():
            paths = sorted(
                str(p) for p in Path(source).iterdir() if p.suffix in (".yaml", ".yml", ".json")
            )
        for path in paths:
            name = "<stdin>" if path == "-" else path
            try:
                text = sys.stdin.read() if path == "-" else Path(path).read_text()
            except OSError as exc:
                raise ManifestError(f"{path}: {exc.strerror}") from None
            try:
                objects.extend(load_manifest(text, name))
            except ObjectError as exc:  # ManifestError already names the source
                raise ManifestError(f"{name}: {exc}") from None
    return objects


def pod_arg(arg: str) -> tuple[str, str]:
    namespace, _, name = arg.rpartition("/")
    return namespace or "default", name


def up(args: argparse.Namespace) -> int:
    print(f"Creating cluster {args.cluster!r} ...", flush=True)
    settings: dict[str, Any] = {}
    if args.trust_domain:
        if reason := check_trust_domain(args.trust_domain):
            raise ClusterError(f"--trust-domain: {reason}")
        settings["trust_domain"] = args.trust_domain
    if args.workload_cert_ttl:
        settings["workload_cert_ttl_s"] = parse_duration(args.workload_cert_ttl)
    if args.ca_dir:
        ca_dir = Path(args.ca_dir).resolve()
        if not (ca_dir / "ca-cert.pem").is_file() or not (ca_dir / "ca-key.pem").is_file():
            raise ClusterError(
                f"--ca-dir {ca_dir}: needs ca-cert.pem and ca-key.pem "
                "(and cert-chain.pem + root-cert.pem for an intermediate)"
            )
        settings["ca_dir"] = str(ca_dir)
    seconds = _cluster(args, verbose=True).up(args.nodes, settings)
    print(
        f"Cluster {args.cluster!r} ready in {seconds:.1f}s. Try: ambientctl status"
        + ("" if args.cluster == naming.DEFAULT_CLUSTER else f" --cluster {args.cluster}")
    )
    return 0


def down(args: argparse.Namespace) -> int:
    if reason := naming.check_cluster_name(args.cluster):
        raise ClusterError(reason)
    report = teardown.down(args.cluster)
    print(
        f"Cluster {args.cluster!r} removed ({report.namespaces} network namespaces, "
        f"{report.processes} processes)."
    )
    return 0


def apply(args: argparse.Namespace) -> int:
    for change in _cluster(args).apply(_read_sources(args.filename)):
        print(f"{change.ref.kind.lower()}/{change.ref.name} {change.action}")
    return 0


def delete(args: argparse.Namespace) -> int:
    if args.filename:
        refs = refs_of(_read_sources(args.filename))
    elif args.kind and args.names:
        kind = _kind(args.kind)
        namespace = "" if kind == "Namespace" else args.namespace
        refs = [ObjectRef(kind, namespace, n) for n in args.names]
    else:
        raise ClusterError("delete needs -f FILE or KIND NAME...")
    for change in _cluster(args).delete(refs, ignore_missing=args.ignore_not_found):
        print(f"{change.ref.kind.lower()}/{change.ref.name} deleted")
    return 0


def label(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    ref = ObjectRef(kind, "" if kind == "Namespace" else args.namespace, args.name)
    action = _cluster(args).label(ref, parse_label_changes(args.labels), overwrite=args.overwrite)
    print(f"{kind.lower()}/{args.name} {action}")
    return 0


def _print_objects(
    items: list[Obj], args: argparse.Namespace, rows: list[list[Any]], headers: list[str]
) -> None:
    if args.output in ("json", "yaml"):
        data = items[0] if args.name and len(items) == 1 else output.as_list(items)
        print(output.dump(data, args.output))
    elif args.output == "name":
        for obj in items:
            print(f"{obj['kind'].lower()}/{obj['metadata']['name']}")
    elif not rows:
        where = "" if args.all_namespaces else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    else:
        print(output.table(headers, rows))


def get(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    kind = _kind(args.kind)
    if kind == "Node":
        return _get_nodes(cluster, args)
    objects = cluster.read()
    namespace = None if args.all_namespaces or kind == "Namespace" else args.namespace
    items = objects.list(kind, namespace)
    if args.name:
        items = [o for o in items if o["metadata"]["name"] == args.name]
        if not items:
            raise ClusterError(f'{kind} "{args.name}" not found')
    show_ns = args.all_namespaces and kind != "Namespace"
    prefix = ["NAMESPACE"] if show_ns else []
    rows: list[list[Any]] = []
    if kind == "Pod":
        by_key = {(r["namespace"], r["name"]): r for r in cluster.pod_rows(objects)}
        items = [
            output.pod_with_observed_status(
                p, by_key[(p["metadata"]["namespace"], p["metadata"]["name"])]
            )
            for p in items
        ]
        headers = [*prefix, "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
        for p in items:
            r = by_key[(p["metadata"]["namespace"], p["metadata"]["name"])]
            total = len(p["spec"]["containers"])
            ready = total if r["status"] == "Running" else 0
            rows.append(
                [
                    *([r["namespace"]] if show_ns else []),
                    r["name"],
                    f"{ready}/{total}",
                    r["status"],
                    r["restarts"],
                    output.age(p["metadata"].get("creationTimestamp")),
                    r["ip"],
                    r["node"],
                ]
            )
    else:
        headers = [*prefix, "NAME", "AGE", "LABELS"]
        for o in items:
            labels = ",".join(f"{k}={v}" for k, v in (o["metadata"].get("labels") or {}).items())
            rows.append(
                [
                    *([o["metadata"]["namespace"]] if show_ns else []),
                    o["metadata"]["name"],
                    output.age(o["metadata"].get("creationTimestamp")),
                    labels or "<none>",
                ]
            )
    _print_objects(items, args, rows, headers)
    return 0


def _get_nodes(cluster: Cluster, args: argparse.Namespace) -> int:
    ready = {n["name"]: n["ready"] for n in cluster.status()["nodes"]}
    plans = [p for p in cluster.nodes() if not args.name or p.name == args.name]
    if args.name and not plans:
        raise ClusterError(f'Node "{args.name}" not found')
    items = [output.node_object(p, ready[p.name]) for p in plans]
    rows = [
        [p.name, "Ready" if ready[p.name] else "NotReady", p.node_ip, p.pod_cidr] for p in plans
    ]
    args.all_namespaces = True
    _print_objects(items, args, rows, ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"])
    return 0


def status(args: argparse.Namespace) -> int:
    report = _cluster(args).status()
    if args.output != "table":
        print(output.dump(report, args.output))
        return 0
    print(
        f"Cluster {report['cluster']}  (store revision {report['revision']}, underlay netns "
        f"{report['underlayNetns']})\n"
    )
    print(
        output.table(
            ["NODE", "READY", "IP", "POD-CIDR", "NETNS", "ZTUNNEL-NETNS"],
            [
                [n["name"], n["ready"], n["ip"], n["podCIDR"], n["netns"], n["ztunnelNetns"]]
                for n in report["nodes"]
            ],
        )
    )
    print()
    if report["pods"]:
        print(
            output.table(
                [
                    "POD",
                    "STATUS",
                    "IP",
                    "NODE",
                    "SERVICEACCOUNT",
                    "ENROLLED",
                    "REDIRECTED",
                    "NETNS",
                ],
                [
                    [
                        f"{p['namespace']}/{p['name']}",
                        p["status"],
                        p["ip"],
                        p["node"],
                        p["serviceAccount"],
                        "yes" if p["enrolled"] else "no",
                        _redirected(p),
                        p["netns"],
                    ]
                    for p in report["pods"]
                ],
            )
        )
    else:
        print("No pods.")
    print(f"\nNetwork: {report['network']}\n")
    print(
        output.table(
            ["COMPONENT", "NODE", "RUNNING", "RESTARTS", "HEALTH", "NETNS"],
            [
                [c["name"], c["node"], c["running"], c["restarts"], c["health"], c["netns"]]
                for c in report["components"]
            ],
        )
    )
    _print_config(report["config"])
    return 0


def _redirected(pod: dict[str, Any]) -> str:
    if pod["redirected"]:
        return "yes"
    return f"no ({pod['pending']})" if pod.get("pending") else "no"


def _print_config(config: dict[str, Any]) -> None:
    if not config:
        print("\nConfig streams: controller unreachable")
        return
    print(f"\nConfig streams (controller at version {config['version']}):")
    rows = [
        [
            p["kind"],
            p["node"],
            p["peer"],
            p["ackedVersion"],
            "in sync" if p["ackedVersion"] == config["version"] else "behind",
            f"v{p['nackedVersion']}: {p['lastError']}" if p["nackedVersion"] else "",
        ]
        for p in config["proxies"]
    ]
    print(output.table(["PROXY", "NODE", "PEER", "ACKED", "STATE", "LAST-NACK"], rows))


def exec_(args: argparse.Namespace) -> int:
    command = args.command
    if not command:
        raise ClusterError("exec needs a command: ambientctl exec NS/POD -- CMD ...")
    namespace, name = pod_arg(args.pod)
    cluster = _cluster(args)
    cluster.find("Pod", namespace, name)
    netns_path = naming.NETNS_DIR / naming.pod_netns(args.cluster, namespace, name)
    if not netns_path.exists():
        raise ClusterError(
            f"pod {namespace}/{name}: network namespace {netns_path} is missing "
            "(run 'ambientctl up' to repair)"
        )
    sys.stdout.flush()
    os.execvp(  # noqa: S606 - replacing ourselves passes stdio and the exit code through
        "nsenter", ["nsenter", f"--net={netns_path}", "--", *command]
    )
    return 127  # pragma: no cover - execvp does not return


def _log_path(cluster: Cluster, namespace: str, name: str, container: str | None) -> Path:
    if namespace == system.SYSTEM_NAMESPACE:
        if system.find(cluster.name, cluster.nodes(), name) is None:
            names = ", ".join(c.name for c in system.components(cluster.name, cluster.nodes()))
            raise ClusterError(f"no component {name!r} (components: {names})")
        return system.log_path(cluster.store, name)
    pod = cluster.find("Pod", namespace, name)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    container = container or containers[0]
    if container not in containers:
        raise ClusterError(
            f"container {container!r} is not in pod {namespace}/{name} "
            f"(containers: {', '.join(containers)})"
        )
    return cluster.store.pod_dir(namespace, name) / f"{container}.log"


def logs(args: argparse.Namespace) -> int:
    namespace, name = pod_arg(args.pod)
    path = _log_path(_cluster(args), namespace, name, args.container)
    if not path.exists():
        return 0  # not started yet: nothing logged
    out = sys.stdout.buffer
    with path.open("rb") as f:
        lines = f.readlines()
        out.writelines(lines if args.tail < 0 else lines[len(lines) - args.tail :])
        out.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
            else:
                time.sleep(0.2)
    return 0


def parse_duration(text: str) -> int:
    """`90s`, `10m`, `24h`, `2d` or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = int(number) * units[unit]
    except ValueError:
        raise ClusterError(f"invalid duration {text!r} (examples: 90s, 10m, 24h)") from None
    if value <= 0:
        raise ClusterError(f"duration {text!r} must be positive")
    return value


def metrics(args: argparse.Namespace) -> int:
    """Prometheus metrics of a component (controller, node-agent-<node>, ztunnel-<node>)."""
    cluster = _cluster(args)
    if "/" in args.component:  # a pod serving Istio's 15020 (a waypoint)
        namespace, name = pod_arg(args.component)
        netns = naming.pod_netns(cluster.name, namespace, name)
        found: system.Component | None = system.Component(args.component, "", netns, [])
    else:
        found = system.find(cluster.name, cluster.nodes(), args.component)
    if (component := found) is None:
        names = ", ".join(c.name for c in system.components(cluster.name, cluster.nodes()))
        raise ClusterError(f"no component {args.component!r} (components: {names})")
    try:
        status, body = system.metrics_get(component)
    except OSError as exc:
        raise ClusterError(f"{component.name} is not answering: {exc}") from None
    lines = body.decode().splitlines()
    if args.grep:
        lines = [line for line in lines if args.grep in line and not line.startswith("#")]
    print("\n".join(lines))
    return 0 if status == 200 else 1


def restart(args: argparse.Namespace) -> int:
    """Restart components; `ztunnel` means every node's, one node at a time."""
    cluster = _cluster(args)
    comps = system.components(cluster.name, cluster.nodes(), cluster.store.info().ca_dir)
    by_name = {c.name: c for c in comps}
    chosen: list[system.Component] = []
    for name in args.components:
        group = [c for c in comps if c.name.startswith(f"{name}-")]
        if name in by_name:
            chosen.append(by_name[name])
        elif group:
            chosen.extend(group)
        else:
            raise ClusterError(f"no component {name!r} (components: {', '.join(by_name)})")
    for component in chosen:
        started = time.monotonic()
        system.restart(cluster.store, component)
        print(f"{component.name} restarted ({time.monotonic() - started:.1f}s)")
    return 0
