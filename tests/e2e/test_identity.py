"""Identities in a running local cluster (issue: identity acceptance).

- certificates the ztunnels hold validate with an independent SPIFFE implementation;
- a node's credential cannot get another node's pod identity, nor a two-URI-SAN or mismatched CSR,
  and the refusals show in the controller's metrics;
- with the controller stopped for longer than half a certificate's lifetime, identities keep
  working and are renewed when it returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import verification
from spiffe import SpiffeId as RefSpiffeId
from spiffe import TrustDomain, X509Bundle, X509Svid

from api import ports
from api.spiffe import SpiffeId
from common import http1, tls
from controller.ca import authority
from localcluster import naming, system, teardown
from localcluster.cluster import Cluster
from localcluster.netns import connect_in, http_get_in
from localcluster.store import ClusterStore
from tests import pki
from tests.support import ambientctl, leftovers, namespace_manifest, pod_manifest, wait_for
from ztunnel.identity.caclient import build_csr

TTL_S = 20


@pytest.fixture
def cluster(state_dir: Path, cluster_name: str) -> Iterator[str]:
    ambientctl(cluster_name, "up", "--workload-cert-ttl", f"{TTL_S}s")
    docs = [namespace_manifest("shop")]
    docs += [
        pod_manifest(n, "shop", ["sleep", "infinity"], node=node, service_account=n)
        for n, node in (("web", "node1"), ("db", "node2"))
    ]
    ambientctl(cluster_name, "apply", "-f", "-", stdin="\n---\n".join(docs))
    ambientctl(cluster_name, "label", "namespace", "shop", "istio.io/dataplane-mode=ambient")
    try:
        yield cluster_name
    finally:
        teardown.down(cluster_name)
        assert leftovers(cluster_name) == []


def held(cluster: str, pod: str) -> dict[str, Any]:
    done = ambientctl(cluster, "certs", pod, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {"state": done.stderr.strip()}


def wait_available(cluster: str, pod: str) -> dict[str, Any]:
    wait_for(lambda: held(cluster, pod).get("state") == "Available", 15, f"{pod} certificate")
    return held(cluster, pod)


def test_held_certificates_validate_with_an_independent_spiffe_implementation(
    cluster: str,
) -> None:
    report = wait_available(cluster, "shop/web")
    assert report["node"] == "node1"
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in report["certChainPem"]]
    bundle_pem = "".join(report["trustBundlePem"]).encode()
    # py-spiffe parses the bundle for the trust domain...
    bundle = X509Bundle.parse(TrustDomain("cluster.local"), bundle_pem)
    roots = list(bundle.x509_authorities)
    # ...and the leaf chains to it as a client and as a server (mTLS needs both).
    store = verification.Store(roots)
    now = (
        chain[0].not_valid_before_utc
        + (chain[0].not_valid_after_utc - chain[0].not_valid_before_utc) / 2
    )
    verifier = verification.PolicyBuilder().store(store).time(now).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    assert [
        u.value for u in verified.subjects or [] if isinstance(u, x509.UniformResourceIdentifier)
    ] == ["spiffe://cluster.local/ns/shop/sa/web"]
    # The ztunnel never hands out keys, so for X509Svid.parse (which needs one) we ask the CA
    # ourselves with node1's credential, as a third-party client would.
    key = authority.new_key()
    reply = _sign(
        cluster,
        "node1",
        SpiffeId("cluster.local", "shop", "web"),
        build_csr(SpiffeId("cluster.local", "shop", "web"), key),
    )
    assert reply[0] == 200, reply
    svid = X509Svid.parse("".join(reply[1]["certChain"]).encode(), authority.key_pem(key))
    assert svid.spiffe_id == RefSpiffeId("spiffe://cluster.local/ns/shop/sa/web")


def _sign(cluster: str, node: str, identity: SpiffeId, csr_pem: str) -> tuple[int, Any]:
    store = ClusterStore(cluster)
    token = store.node_token_path(node).read_text().strip()
    ctx = tls.client_context([(store.ca_dir / "root-cert.pem").read_text()])
    node1 = naming.node_netns(cluster, "node1")

    async def call() -> tuple[int, Any]:
        sock = connect_in(node1, "127.0.0.1", ports.CONTROLLER, 5)
        status, body, _ = await http1.request(
            "127.0.0.1",
            ports.CONTROLLER,
            "POST",
            "/v1/certificates",
            tls=ctx,
            sock=sock,
            body=json.dumps({"identity": str(identity), "csr": csr_pem}).encode(),
            headers={"authorization": f"Bearer {token}"},
        )
        return status, json.loads(body)

    return asyncio.run(call())


def _two_uri_csr(identity: SpiffeId) -> str:
    key = authority.new_key()
    names = [
        x509.UniformResourceIdentifier(str(identity)),
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/admin"),
    ]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_cross_node_and_forged_requests_are_refused_and_counted(cluster: str) -> None:
    web = SpiffeId("cluster.local", "shop", "web")
    other = SpiffeId("cluster.local", "shop", "admin")
    cases = [
        ("node2", web, build_csr(web, authority.new_key()), 403, "NodeNotAuthorized"),
        ("node1", web, _two_uri_csr(web), 400, "CsrSanMismatch"),
        ("node1", web, build_csr(other, authority.new_key()), 400, "CsrSanMismatch"),
    ]
    for node, identity, csr_pem, status, reason in cases:
        got = _sign(cluster, node, identity, csr_pem)
        assert (got[0], got[1]["reason"]) == (status, reason)
    status, text = http_get_in(naming.node_netns(cluster, "node1"), "127.0.0.1", 15014, "/metrics")
    assert status == 200
    assert 'ambientmesh_ca_refusals_total{reason="NodeNotAuthorized"} 1.0' in text.decode()
    assert 'ambientmesh_ca_refusals_total{reason="CsrSanMismatch"} 2.0' in text.decode()


def test_identities_survive_a_controller_outage_longer_than_half_their_lifetime(
    cluster: str,
) -> None:
    first = wait_available(cluster, "shop/db")["chain"][0]
    c = Cluster(cluster)
    controller = system.find(cluster, c.nodes(), system.CONTROLLER)
    assert controller is not None
    system.stop(c.store, controller)
    stopped = time.monotonic()
    time.sleep(TTL_S / 2 + 2)  # past half-life: renewal is due and failing
    during = held(cluster, "shop/db")
    assert during["state"] == "Available", "a still-valid certificate is kept"
    assert during["chain"][0]["serial"] == first["serial"]
    assert "CA unreachable" in during["lastError"]
    assert time.monotonic() - stopped > TTL_S / 2
    ambientctl(cluster, "up")  # restarts the controller; ztunnels keep running
    wait_for(
        lambda: (
            held(cluster, "shop/db")["chain"][0]["serial"] != first["serial"]
            and held(cluster, "shop/db")["lastError"] == ""
        ),
        15,
        "renewal after the outage",
    )
    status = json.loads(ambientctl(cluster, "status", "-o", "json").stdout)
    ztunnels = [comp for comp in status["components"] if comp["name"].startswith("ztunnel")]
    assert all(z["restarts"] == 0 for z in ztunnels), "proxies were not restarted"


def test_certs_explains_a_pod_that_is_not_enrolled(cluster: str) -> None:
    ambientctl(cluster, "label", "pod", "web", "-n", "shop", "istio.io/dataplane-mode=none")
    wait_for(
        lambda: "holds no certificate" in held(cluster, "shop/web")["state"],
        10,
        "certificate dropped after opt-out",
    )
    assert "is the pod enrolled?" in held(cluster, "shop/web")["state"]


def test_plugged_intermediate_ca_issues_chains_to_the_external_root(
    state_dir: Path, cluster_name: str, tmp_path: Path
) -> None:
    ext_root, ext_key = pki.root(now=datetime.now(UTC), name="corp root")
    inter, inter_key = pki.intermediate(ext_root, ext_key, "mesh inter", datetime.now(UTC))
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    (cacerts / "ca-cert.pem").write_text(authority.pem(inter))
    (cacerts / "ca-key.pem").write_bytes(authority.key_pem(inter_key))
    (cacerts / "cert-chain.pem").write_text(authority.pem(inter) + authority.pem(ext_root))
    (cacerts / "root-cert.pem").write_text(authority.pem(ext_root))
    try:
        ambientctl(cluster_name, "up", "--ca-dir", str(cacerts))
        ambientctl(
            cluster_name,
            "apply",
            "-f",
            "-",
            stdin=pod_manifest(
                "p",
                "default",
                ["sleep", "infinity"],
                node="node1",
                labels={"istio.io/dataplane-mode": "ambient"},
            ),
        )
        report = wait_available(cluster_name, "default/p")
        names = [c["name"] for c in report["chain"]]
        assert names[1:] == ["CN=mesh inter", "CN=corp root"]
        assert [r["name"] for r in report["roots"]] == ["CN=corp root"]
        table = ambientctl(cluster_name, "certs", "default/p").stdout
        assert "Intermediate" in table
    finally:
        teardown.down(cluster_name)
    assert leftovers(cluster_name) == []
