"""`ambientctl waypoint apply|delete|list`, as `istioctl waypoint`: a Gateway of class
`istio-waypoint` with its HBONE listener, optionally named by its namespace
(`istio.io/use-waypoint`) so that every workload there is reached through it."""

from __future__ import annotations

import argparse
import time

from ambientctl import output
from api.ambient import USE_WAYPOINT, WAYPOINT_CLASS
from api.objects import Obj, ObjectRef, validate
from localcluster import netns as kernel
from localcluster import pods
from localcluster.cluster import Cluster, ClusterError

READY_TIMEOUT_S = 30.0


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    p = sub.add_parser("waypoint", help="create, delete or list waypoints (L7 proxies)")
    verbs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (
        ("apply", "create (or update) a waypoint and wait until it is ready"),
        ("delete", "delete a waypoint (its pod goes with it)"),
        ("list", "list waypoints and their pods"),
    ):
        v = verbs.add_parser(name, help=help_, description=help_)
        common(v)  # type: ignore[operator]
        v.add_argument("-n", "--namespace", default="default")
        v.set_defaults(func=run)
        if name != "list":
            v.add_argument("--name", default="waypoint", help="Gateway name (default: waypoint)")
        if name == "apply":
            v.add_argument(
                "--enroll-namespace",
                action="store_true",
                help=f"label the namespace {USE_WAYPOINT}=<name>: its workloads use the waypoint",
            )


def gateway(namespace: str, name: str) -> Obj:
    """What `istioctl waypoint generate` writes."""
    return validate(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"istio.io/waypoint-for": "service"},
            },
            "spec": {
                "gatewayClassName": WAYPOINT_CLASS,
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        }
    )


def run(args: argparse.Namespace) -> int:
    cluster = Cluster(args.cluster)
    if args.action == "list":
        return _list(cluster, args.namespace)
    if args.action == "delete":
        cluster.delete([ObjectRef("Gateway", args.namespace, args.name)], ignore_missing=False)
        print(f"waypoint {args.namespace}/{args.name} deleted")
        return 0
    for change in cluster.apply([gateway(args.namespace, args.name)]):
        print(f"{change.ref.kind.lower()}/{change.ref.name} {change.action}")
    if args.enroll_namespace:
        ref = ObjectRef("Namespace", "", args.namespace)
        action = cluster.label(ref, {USE_WAYPOINT: args.name}, overwrite=True)
        print(f"namespace/{args.namespace} {action}")
    wait_ready(cluster, args.namespace, args.name)
    print(f"waypoint {args.namespace}/{args.name} ready")
    return 0


def wait_ready(cluster: Cluster, namespace: str, name: str) -> None:
    """Until the waypoint pod answers /healthz/ready (config and certificate held)."""
    ref = pods.PodRef(cluster.name, namespace, name)
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "not started"
    while time.monotonic() < deadline:
        try:
            code, body = kernel.http_get_in(ref.netns, "127.0.0.1", 15021, "/healthz/ready", 1.0)
            if code == 200:
                return
            last = body.decode().strip()
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ClusterError(
        f"waypoint {namespace}/{name} not ready after {READY_TIMEOUT_S:.0f}s: {last} "
        f"(see: ambientctl logs {namespace}/{name})"
    )


def _list(cluster: Cluster, namespace: str) -> int:
    objects = cluster.read()
    rows = []
    for gw in objects.list("Gateway", namespace):
        if (gw.get("spec") or {}).get("gatewayClassName") != WAYPOINT_CLASS:
            continue
        name = gw["metadata"]["name"]
        pod = objects.get(ObjectRef("Pod", namespace, name))
        ip = pod["status"]["podIP"] if pod else "-"
        rows.append([name, ip, pod["spec"]["nodeName"] if pod else "-"])
    print(output.table(["NAME", "POD IP", "NODE"], rows))
    return 0
