"""RELIABILITY I-10: pathological certificate chains cost a ztunnel's HBONE server a bounded
amount of CPU and are refused. Real TLS 1.3 handshakes over memory BIOs against the server
context every HBONE listener uses; the server's own CPU is measured (thread time), and bounded
at 25 ms, ~15x a whole full mutual handshake here (~1.7 ms for both ends, PERF.md): a budget,
not a timing test (webpki's path building took minutes on such input, RUSTSEC-2023-0052).

What bounds it is OpenSSL's: a chain that does not reach the trust bundle is refused once built,
before any signature is checked; the certificate list is capped at 100 KiB and the depth at 100
(Python's `ssl` offers neither knob); and the handshake timeout (5 s) still holds.
"""

from __future__ import annotations

import ssl
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common import tls
from controller.ca import authority
from tests import pki
from ztunnel.identity import verify

NOW = datetime.now(UTC)  # OpenSSL checks validity by the real clock
BUDGET_S = 0.025
Mesh = tuple[x509.Certificate, ec.EllipticCurvePrivateKey, ssl.SSLContext, list[str]]


def ca_cert(
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    name: str,
    constraints: x509.NameConstraints | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = authority.new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def client_with(
    chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey, bundle: list[str]
) -> ssl.SSLContext:
    return tls.client_context(
        bundle,
        chain_pem=[authority.pem(c) for c in chain],
        key_pem=authority.key_pem(key),
        alpn=["h2"],
    )


def many_names_leaf(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf with 200 URI SANs (> 8 KiB), valid now."""
    uris = tuple(f"spiffe://cluster.local/ns/mesh/sa/a{i:04d}" for i in range(200))
    return pki.leaf(
        issuer,
        issuer_key,
        uris=uris,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(hours=1),
    )


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[ssl.SSLObject, float]:
    """The server's end after the handshake, and the CPU the server spent in it."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    spent, done, failure = 0.0, False, None
    for _ in range(10):
        try:
            c.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass  # the client learns of the refusal; the server's verdict is what counts
        s_in.write(c_out.read())
        start = time.thread_time()
        try:
            s.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            failure = exc
        spent += time.thread_time() - start
        c_in.write(s_out.read())
        if done or failure:
            break
    if failure is not None:
        raise failure
    return s, spent


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    root, root_key = pki.root(NOW)
    bundle = [authority.pem(root)]
    cert, key = pki.live_leaf(root, root_key, "spiffe://cluster.local/ns/mesh/sa/server")
    server = tls.server_context(
        [authority.pem(cert)],
        authority.key_pem(key),
        bundle_pem=bundle,
        require_client_cert=True,
        alpn=["h2"],
        tickets=True,
    )
    return root, root_key, server, bundle


def test_a_normal_handshake_is_within_the_budget(mesh: Mesh) -> None:
    root, root_key, server, bundle = mesh
    cert, key = pki.live_leaf(root, root_key, "spiffe://cluster.local/ns/mesh/sa/client")
    handshake(client_with([cert], key, bundle), server)  # warm-up
    s, spent = handshake(client_with([cert], key, bundle), server)
    assert s.getpeercert(binary_form=True)
    assert spent < BUDGET_S


def test_fifty_untrusted_intermediates_are_refused_cheaply(mesh: Mesh) -> None:
    _, _, server, bundle = mesh
    issuer, issuer_key = ca_cert(None, None, "attacker root")
    chain: list[x509.Certificate] = []
    for depth in range(50):
        issuer, issuer_key = ca_cert(issuer, issuer_key, f"attacker intermediate {depth}")
        chain.insert(0, issuer)
    leaf, key = pki.live_leaf(issuer, issuer_key, "spiffe://cluster.local/ns/mesh/sa/client")
    start = time.thread_time()
    with pytest.raises(ssl.SSLError):
        handshake(client_with([leaf, *chain], key, bundle), server)
    assert time.thread_time() - start < 4 * BUDGET_S  # both ends, 50 certificates parsed


def test_a_leaf_with_an_8_kib_san_list_from_our_own_ca_is_refused_after_tls(
    mesh: Mesh,
) -> None:
    """A misissued leaf: TLS accepts it (our root signed it); the SPIFFE checks do not, at once."""
    root, root_key, server, bundle = mesh
    leaf, key = many_names_leaf(root, root_key)
    assert len(pki.der(leaf)) > 8 * 1024
    s, spent = handshake(client_with([leaf], key, bundle), server)
    assert spent < BUDGET_S
    der = s.getpeercert(binary_form=True)
    assert der is not None
    start = time.thread_time()
    with pytest.raises(verify.PeerRejected) as refused:
        verify.verify_peer(
            der, trust_domain="cluster.local", purpose=verify.Purpose.CLIENT, now=NOW
        )
    assert refused.value.reason is verify.Reason.MULTIPLE_URI_SANS
    assert time.thread_time() - start < BUDGET_S


def test_a_huge_name_constraint_set_against_a_huge_san_list_stays_within_the_budget(
    mesh: Mesh,
) -> None:
    """An intermediate of our root with 1 000 permitted subtrees, a leaf with 200 URIs: OpenSSL
    checks every name against every constraint (and caps that work); the leaf is refused."""
    root, root_key, server, bundle = mesh
    subtrees: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"td{i}.example") for i in range(1000)
    ]
    constrained, constrained_key = ca_cert(
        root, root_key, "constrained", x509.NameConstraints(subtrees, None)
    )
    leaf, key = many_names_leaf(constrained, constrained_key)
    start = time.thread_time()
    with pytest.raises(ssl.SSLError):
        handshake(client_with([leaf, constrained], key, bundle), server)
    assert time.thread_time() - start < 4 * BUDGET_S
