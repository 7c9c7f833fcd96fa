"""The CA: what it signs, what it loads, which requests it refuses and why (I-6, I-11, I-12)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from spiffe import X509Svid

from api.spiffe import SpiffeId
from controller.ca import authority, csr, nodeauth
from controller.ca.refusal import Reason, Refusal
from tests import pki
from ztunnel.identity.caclient import build_csr
from ztunnel.identity.verify import Purpose, verify_peer

ID = SpiffeId("cluster.local", "demo", "client")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> authority.CaMaterial:
    return authority.load_or_create(tmp_path_factory.mktemp("ca"), "cluster.local", pki.NOW)


def test_leaf_is_a_spiffe_svid(material: authority.CaMaterial) -> None:
    key = authority.new_key()
    leaf = authority.sign_leaf(material, key.public_key(), ID, timedelta(hours=24), pki.NOW)
    assert (
        verify_peer(
            pki.der(leaf), trust_domain="cluster.local", purpose=Purpose.CLIENT, now=pki.NOW
        )
        == ID
    )
    assert (
        verify_peer(
            pki.der(leaf), trust_domain="cluster.local", purpose=Purpose.SERVER, now=pki.NOW
        )
        == ID
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert leaf.not_valid_after_utc - pki.NOW == timedelta(hours=24)
    assert pki.NOW - leaf.not_valid_before_utc == authority.BACKDATE
    # An independent SPIFFE implementation accepts it as an X509-SVID.
    chain = "".join([authority.pem(leaf), *material.chain_pem()]).encode()
    svid = X509Svid.parse(chain, authority.key_pem(key))
    assert str(svid.spiffe_id) == str(ID)
    # And a WebPKI-style verifier chains it to the bundle as a client certificate.
    store = verification.Store(list(material.roots))
    verifier = verification.PolicyBuilder().store(store).time(pki.NOW).build_client_verifier()
    verified = verifier.verify(leaf, [])
    assert verified.chain[-1] == material.roots[0]


def test_local_root_is_created_once_with_a_private_key(tmp_path: Path) -> None:
    first = authority.load_or_create(tmp_path, "td", pki.NOW)
    again = authority.load_or_create(tmp_path, "td", pki.NOW + timedelta(days=1))
    assert first.roots == again.roots
    assert oct((tmp_path / authority.CA_KEY).stat().st_mode & 0o777) == "0o600"
    root = first.roots[0]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.not_valid_after_utc - pki.NOW == authority.ROOT_VALIDITY


def _write(path: Path, *certs: x509.Certificate) -> None:
    path.write_text("".join(authority.pem(c) for c in certs))


def test_plugged_intermediate_chains_to_an_external_root_beside_an_old_one(tmp_path: Path) -> None:
    """F-8 overlap: the bundle holds the old and the new root; leaves chain through the
    intermediate to the new one."""
    ext_root, ext_key = pki.root(name="external root")
    old_root, _ = pki.root(name="old root")
    inter, inter_key = pki.intermediate(ext_root, ext_key, "intermediate", pki.NOW)
    _write(tmp_path / authority.CA_CERT, inter)
    (tmp_path / authority.CA_KEY).write_bytes(authority.key_pem(inter_key))
    _write(tmp_path / authority.CERT_CHAIN, inter, ext_root)
    _write(tmp_path / authority.ROOT_CERT, ext_root, old_root)
    material = authority.load_plugged(tmp_path)
    assert len(material.roots) == 2
    leaf = authority.sign_leaf(
        material, authority.new_key().public_key(), ID, timedelta(hours=1), pki.NOW
    )
    store = verification.Store(list(material.roots))
    verifier = verification.PolicyBuilder().store(store).time(pki.NOW).build_client_verifier()
    assert verifier.verify(leaf, list(material.chain)).chain[-1] == ext_root


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "ca-cert.pem: no such file"),
        ({authority.CA_CERT: "not pem"}, "not PEM certificates"),
        ({authority.CA_CERT: "cert", authority.CA_KEY: "garbage"}, "cannot load the private key"),
        ({authority.CA_CERT: "cert", authority.CA_KEY: "other"}, "does not match"),
    ],
)
def test_bad_plugged_material_names_the_file(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    cert, _ = pki.root()
    _, other = pki.root()
    content = {"cert": authority.pem(cert), "other": authority.key_pem(other).decode()}
    for name, value in files.items():
        (tmp_path / name).write_text(content.get(value, value))
    with pytest.raises(authority.CaMaterialError, match=message):
        authority.load_plugged(tmp_path)


def _csr(names: list[x509.GeneralName] | None, key: object | None = None) -> str:
    key = key or authority.new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    signed = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def test_good_csr_yields_its_key() -> None:
    key = authority.new_key()
    assert csr.check_csr(build_csr(ID, key), ID) == key.public_key()


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        (_csr([URI(str(ID)), URI("spiffe://cluster.local/ns/demo/sa/other")]), Reason.CSR_SAN),
        (_csr([URI("spiffe://cluster.local/ns/demo/sa/other")]), Reason.CSR_SAN),
        (_csr([URI(str(ID)), x509.DNSName("client.demo")]), Reason.CSR_SAN),
        (_csr(None), Reason.CSR_SAN),
        (_csr([URI(str(ID))], rsa.generate_private_key(65537, 2048)), Reason.CSR_KEY_TYPE),
        (_csr([URI(str(ID))], ec.generate_private_key(ec.SECP384R1())), Reason.CSR_KEY_TYPE),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            Reason.CSR_MALFORMED,
        ),
        ("x" * 9000, Reason.CSR_MALFORMED),
        (None, Reason.CSR_MALFORMED),
    ],
)
def test_bad_csrs(pem: str, reason: Reason) -> None:
    with pytest.raises(Refusal) as err:
        csr.check_csr(pem, ID)
    assert err.value.reason is reason


def test_csr_with_a_broken_signature() -> None:
    good = x509.load_pem_x509_csr(build_csr(ID, authority.new_key()).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(Refusal) as err:
        csr.check_csr(tampered.decode(), ID)
    assert err.value.reason in (Reason.CSR_BAD_SIGNATURE, Reason.CSR_MALFORMED)


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        ("spiffe://other.td/ns/a/sa/b", Reason.WRONG_TRUST_DOMAIN),
        ("spiffe://cluster.local/ns/a", Reason.INVALID_IDENTITY),
        (7, Reason.MALFORMED_REQUEST),
    ],
)
def test_requested_identity(identity: object, reason: Reason) -> None:
    with pytest.raises(Refusal) as err:
        csr.parse_identity(identity, "cluster.local")
    assert err.value.reason is reason


TOKENS = nodeauth.NodeTokens({"node1": "secret-1", "node2": "secret-2"})


@pytest.mark.parametrize(
    ("header", "node"),
    [
        ("Bearer secret-1", "node1"),
        ("bearer secret-2", "node2"),
        ("Bearer nope", None),
        ("Basic secret-1", None),
        ("", None),
        (None, None),
        ("Bearer ", None),
    ],
)
def test_node_tokens(header: str | None, node: str | None) -> None:
    if node:
        assert TOKENS.authenticate(header) == nodeauth.Caller(node=node)
    else:
        with pytest.raises(Refusal) as err:
            TOKENS.authenticate(header)
        assert err.value.reason is Reason.UNAUTHENTICATED


KEY = b"pod-token-key"
LOCAL = nodeauth.LocalTokens({"node1": "secret-1"}, KEY)


@pytest.mark.parametrize(
    ("token", "caller"),
    [
        (nodeauth.pod_token(KEY, "uid-1"), nodeauth.Caller(pod_uid="uid-1")),
        ("secret-1", nodeauth.Caller(node="node1")),
        (nodeauth.pod_token(b"other-key", "uid-1"), None),  # signed by another cluster
        (nodeauth.pod_token(KEY, "uid-1")[:-1] + "0", None),
        ("uid-1." + nodeauth.pod_token(KEY, "uid-2").split(".")[1], None),  # another pod's MAC
        ("uid-1.", None),
    ],
)
def test_pod_tokens_are_bound_to_their_pod(token: str, caller: nodeauth.Caller | None) -> None:
    if caller:
        assert LOCAL.authenticate(f"Bearer {token}") == caller
    else:
        with pytest.raises(Refusal, match="unknown token"):
            LOCAL.authenticate(f"Bearer {token}")


def _pod(ns: str, sa: str, node: str, uid: str = "u") -> dict[str, object]:
    return {
        "metadata": {"namespace": ns, "name": "p", "uid": uid},
        "spec": {"nodeName": node, "serviceAccountName": sa},
    }


@pytest.mark.parametrize(
    ("pods", "allowed"),
    [
        ([_pod("demo", "client", "node1")], True),
        ([_pod("demo", "client", "node2")], False),  # I-12: the pod is on another node
        ([_pod("demo", "server", "node1")], False),
        ([_pod("other", "client", "node1")], False),
        ([], False),
        ([_pod("demo", "client", "node2"), _pod("demo", "client", "node1")], True),
    ],
)
def test_node_authorization(pods: list[dict[str, object]], allowed: bool) -> None:
    caller = nodeauth.Caller(node="node1")
    if allowed:
        nodeauth.authorize(pods, caller, ID)
    else:
        with pytest.raises(Refusal) as err:
            nodeauth.authorize(pods, caller, ID)
        assert err.value.reason is Reason.NODE_NOT_AUTHORIZED


@pytest.mark.parametrize(
    ("pods", "allowed"),
    [
        ([_pod("demo", "client", "node1", "me")], True),
        ([_pod("demo", "server", "node1", "me"), _pod("demo", "client", "node1")], False),
        ([_pod("other", "client", "node1", "me")], False),
        ([], False),  # the pod is gone: its token is worth nothing
    ],
)
def test_a_pod_may_have_only_its_own_identity(pods: list[dict[str, object]], allowed: bool) -> None:
    caller = nodeauth.Caller(pod_uid="me")
    if allowed:
        nodeauth.authorize(pods, caller, ID)
    else:
        with pytest.raises(Refusal):
            nodeauth.authorize(pods, caller, ID)
