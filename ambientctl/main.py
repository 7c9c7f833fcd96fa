"""`ambientctl` entry point: parses the verb, runs it against one cluster, maps errors to exit 1.

Every verb takes `--cluster C` (default: $AMBIENTMESH_CLUSTER, else "ambient"), like kubectl's
`--cluster`. Errors are one line on stderr: `error: <what>: <field>: <why>`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pyroute2.netlink.exceptions import NetlinkError

from ambientctl import benchverb, certverbs, kubeverbs, verbs, waypointverbs
from api.errors import ManifestError, ObjectError
from localcluster import naming
from localcluster.cluster import ClusterError
from localcluster.netns import NetnsError
from localcluster.pods import PodRuntimeError
from localcluster.store import StoreError

USER_ERRORS = (
    ManifestError,
    ObjectError,
    ClusterError,
    StoreError,
    NetnsError,
    PodRuntimeError,
    ValueError,
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default=os.environ.get(naming.CLUSTER_ENV, naming.DEFAULT_CLUSTER),
        help="cluster to address (default: $AMBIENTMESH_CLUSTER or 'ambient')",
    )


def _namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambientctl",
        description="Run and inspect an ambientmesh cluster. State: "
        f"${naming.STATE_DIR_ENV} (default {naming.DEFAULT_STATE_DIR}).",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(func=func)
        return p

    p = verb("up", verbs.up, "build (or repair) a local cluster out of network namespaces")
    p.add_argument("--nodes", type=int, default=None, help="node count (new cluster: 2)")
    p.add_argument("--trust-domain", help="SPIFFE trust domain of a new cluster (cluster.local)")
    p.add_argument(
        "--ca-dir",
        help="plug in a CA for a new cluster: ca-cert.pem, ca-key.pem[, cert-chain.pem, "
        "root-cert.pem] (Istio's cacerts layout); default: a generated root",
    )
    p.add_argument(
        "--workload-cert-ttl",
        help="workload certificate lifetime of a new cluster (default 24h; 30s shows rotation)",
    )
    verb("down", verbs.down, "remove every netns, link, process and pin of the cluster")

    p = verb("apply", verbs.apply, "create or update objects from YAML files")
    p.add_argument("-f", "--filename", action="append", required=True, help="file, dir or -")
    p = verb("delete", verbs.delete, "delete objects named in files, or KIND NAME")
    p.add_argument("-f", "--filename", action="append", help="file, dir or -")
    p.add_argument("kind", nargs="?")
    p.add_argument("names", nargs="*")
    p.add_argument("--ignore-not-found", action="store_true")
    _namespace(p)

    p = verb("label", verbs.label, "add (key=value) or remove (key-) labels")
    p.add_argument("kind", help="namespace | pod | service")
    p.add_argument("name")
    p.add_argument("labels", nargs="+", metavar="key=value|key-")
    p.add_argument("--overwrite", action="store_true", help="allow changing an existing value")
    _namespace(p)

    p = verb(
        "get",
        verbs.get,
        "list objects (pods, namespaces, nodes, services, configmaps, gateways, policies = "
        "authorizationpolicies, peerauthentications; kubectl's short names: po, ns, no, svc, cm, "
        "gtw, ap, pa)",
    )
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument(
        "-o", "--output", choices=["table", "wide", "json", "yaml", "name"], default="table"
    )
    p.add_argument("-A", "--all-namespaces", action="store_true")
    _namespace(p)

    p = verb("status", verbs.status, "nodes, pods, enrollment, health and netns names")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")

    p = verb("exec", verbs.exec_, "run a command inside a pod's network namespace")
    p.add_argument("pod", metavar="NS/POD -- CMD ...")

    certverbs.add_arguments(verb)

    _runtime_verbs(verb)
    kubeverbs.add_arguments(sub)
    waypointverbs.add_arguments(sub, _common)
    benchverb.add_arguments(sub)
    return parser


def _runtime_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """restart, metrics, logs: the verbs that talk to running components."""
    p = verb(
        "restart",
        verbs.restart,
        "restart components (ztunnel: no refused connection; node agents: no disruption)",
    )
    p.add_argument(
        "components", nargs="+", help="controller | node-agent[-<node>] | ztunnel[-<node>]"
    )

    p = verb("metrics", verbs.metrics, "Prometheus metrics of a mesh component")
    p.add_argument(
        "component", help="controller | node-agent-<node> | ztunnel-<node> | NS/POD (a waypoint)"
    )
    p.add_argument("--grep", help="only non-comment lines containing this text")

    p = verb("logs", verbs.logs, "print a pod's (or ambientmesh-system/<component>'s) log")
    p.add_argument("pod", metavar="NS/POD")
    p.add_argument("-c", "--container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int, default=-1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # As kubectl: everything after the first `--` is the command of `exec`, never our options.
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.command = command
    if args.verb not in ("get", "logs", "install", "uninstall") and os.geteuid() != 0:
        print("error: ambientctl must run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
    except NetlinkError as exc:
        print(f"error: netlink: {exc}", file=sys.stderr)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
