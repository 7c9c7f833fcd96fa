"""Identity verbs of a local cluster: `certs` shows what a pod's ztunnel holds; `revoke` puts
that certificate on the CA's CRL (`ca-crl.pem`, Istio's plugged-in CA file), which the
controller streams to every proxy (RELIABILITY I-9)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from ambientctl import output
from ambientctl.verbs import pod_arg
from api.spiffe import SpiffeId
from common.crl import CrlError, parse
from controller.ca import authority
from controller.ca.crl import CRL_FILE
from localcluster import system
from localcluster.cluster import Cluster, ClusterError


def _pod(args: argparse.Namespace) -> tuple[Cluster, str, str, str, str]:
    """The cluster, and the pod's namespace, name, node and SPIFFE identity."""
    namespace, name = pod_arg(args.pod)
    cluster = Cluster(args.cluster)
    pod = cluster.find("Pod", namespace, name)
    trust_domain = cluster.store.info().trust_domain
    identity = SpiffeId(trust_domain, namespace, pod["spec"]["serviceAccountName"])
    return cluster, namespace, name, pod["spec"]["nodeName"], str(identity)


def _held_certificate(cluster: Cluster, node: str, identity: str, namespace: str) -> dict[str, Any]:
    try:
        status, body = system.admin_get(cluster.name, node, "/config_dump")
    except OSError as exc:
        raise ClusterError(f"ztunnel on {node} is not answering: {exc}") from None
    if status != 200:
        raise ClusterError(f"ztunnel on {node} answered {status} on /config_dump")
    held: dict[str, Any] | None = {c["identity"]: c for c in json.loads(body)["certificates"]}.get(
        identity
    )
    if held is None:
        raise ClusterError(
            f"ztunnel on {node} holds no certificate for {identity} (is the pod enrolled? "
            f"ambientctl label namespace {namespace} istio.io/dataplane-mode=ambient)"
        )
    return held


def certs(args: argparse.Namespace) -> int:
    """The certificates the pod's node's ztunnel holds for the pod's identity."""
    cluster, namespace, name, node, identity = _pod(args)
    held = _held_certificate(cluster, node, identity, namespace)
    chain = [output.describe_cert(p) for p in held["certChain"]]
    roots = [output.describe_cert(p) for p in held["trustBundle"]]
    if args.output in ("json", "yaml"):
        report = {
            "pod": f"{namespace}/{name}",
            "node": node,
            "identity": identity,
            "state": held["state"],
            "lastError": held["lastError"],
            "chain": chain,
            "roots": roots,
            "certChainPem": held["certChain"],
            "trustBundlePem": held["trustBundle"],
        }
        print(output.dump(report, args.output))
        return 0
    error = f" (last error: {held['lastError']})" if held["lastError"] else ""
    print(f"{identity}  held by the ztunnel of {node}: {held['state']}{error}")
    typed = [("Leaf", c) for c in chain[:1]]
    typed += [("Intermediate", c) for c in chain[1:] if c not in roots]
    typed += [("Root", c) for c in roots]
    rows = [[kind, c["serial"], c["notBefore"], c["notAfter"], c["name"]] for kind, c in typed]
    print(output.table(["TYPE", "SERIAL", "NOT BEFORE", "NOT AFTER", "NAME"], rows))
    return 0


def revoke(args: argparse.Namespace) -> int:
    """Add the certificate a pod's ztunnel holds to the CA's CRL (or withdraw the CRL)."""
    cluster = Cluster(args.cluster)
    info = cluster.store.info()
    ca_dir = Path(info.ca_dir) if info.ca_dir else cluster.store.ca_dir
    path = ca_dir / CRL_FILE
    if args.withdraw:
        path.unlink(missing_ok=True)
        print(f"CRL withdrawn ({path}): nothing is revoked")
        return 0
    if not args.pod:
        raise ClusterError("name a pod (NS/POD), or --withdraw")
    _, namespace, _, node, identity = _pod(args)
    held = _held_certificate(cluster, node, identity, namespace)
    leaf = x509.load_pem_x509_certificate(held["certChain"][0].encode())
    material = authority.load_plugged(ca_dir)
    serials = {leaf.serial_number}
    if path.exists():
        try:
            serials |= parse(path.read_text(), [material.signing_cert]).revoked
        except CrlError as exc:
            raise ClusterError(f"{path}: {exc}; fix or remove it first") from None
    now = datetime.now(UTC)
    pem = authority.sign_crl(
        material.signing_cert, material.signing_key, sorted(serials), now, timedelta(days=args.days)
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(pem)
    tmp.replace(path)
    print(
        f"revoked {identity} (serial {leaf.serial_number:x}): {len(serials)} on {path}, "
        f"valid {args.days} days; every proxy applies it within seconds"
    )
    return 0


def add_arguments(verb: Any) -> None:
    p = verb("certs", certs, "certificates the node's ztunnel holds for a pod")
    p.add_argument("pod", metavar="NS/POD")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p = verb(
        "revoke",
        revoke,
        "put the certificate a pod's ztunnel holds on the CA's CRL; --withdraw removes the CRL",
    )
    p.add_argument("pod", metavar="NS/POD", nargs="?")
    p.add_argument("--withdraw", action="store_true", help="remove the CRL: nothing revoked")
    p.add_argument("--days", type=int, default=7, help="until the CRL's nextUpdate (7)")
