"""Peer verification: one negative test per check (RELIABILITY I-2, I-3, I-4, I-5, I-6)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from api.spiffe import SpiffeId
from tests import pki
from ztunnel.identity.verify import PeerRejected, Purpose, Reason, verify_peer

ROOT, ROOT_KEY = pki.root()
CLIENT = SpiffeId("cluster.local", "demo", "client")


def check(cert_der: bytes, purpose: Purpose = Purpose.CLIENT, **kw: object) -> SpiffeId:
    return verify_peer(cert_der, trust_domain="cluster.local", purpose=purpose, now=pki.NOW, **kw)  # type: ignore[arg-type]


def test_good_leaf_yields_its_identity() -> None:
    cert, _ = pki.leaf(ROOT, ROOT_KEY)
    assert check(pki.der(cert), expected={CLIENT}) == CLIENT
    assert check(pki.der(cert), Purpose.SERVER) == CLIENT


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"uris": (), "dns": ("client.demo.svc",)}, Reason.NO_URI_SAN),
        ({"uris": ()}, Reason.NO_URI_SAN),
        (
            {
                "uris": (
                    "spiffe://cluster.local/ns/demo/sa/client",
                    "spiffe://cluster.local/ns/demo/sa/other",
                )
            },
            Reason.MULTIPLE_URI_SANS,
        ),
        ({"uris": ("spiffe://cluster.local/ns/demo/sa/client/extra",)}, Reason.INVALID_SPIFFE_ID),
        ({"uris": ("spiffe://evil.local/ns/demo/sa/client",)}, Reason.TRUST_DOMAIN),
        ({"ca": True}, Reason.CA_AS_LEAF),
        ({"key_cert_sign": True}, Reason.CA_AS_LEAF),
        ({"digital_signature": False}, Reason.KEY_USAGE),
        ({"eku": (ExtendedKeyUsageOID.SERVER_AUTH,)}, Reason.EXTENDED_KEY_USAGE),
        ({"not_after": pki.NOW - timedelta(seconds=1)}, Reason.EXPIRED),
        ({"not_before": pki.NOW + timedelta(minutes=6)}, Reason.NOT_YET_VALID),
    ],
)
def test_rejections(kwargs: dict[str, object], reason: Reason) -> None:
    cert, _ = pki.leaf(ROOT, ROOT_KEY, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(PeerRejected) as err:
        check(pki.der(cert))
    assert err.value.reason is reason


def test_server_purpose_needs_server_auth() -> None:
    cert, _ = pki.leaf(ROOT, ROOT_KEY, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    with pytest.raises(PeerRejected) as err:
        check(pki.der(cert), Purpose.SERVER)
    assert err.value.reason is Reason.EXTENDED_KEY_USAGE


def test_clock_skew_within_five_minutes_is_tolerated() -> None:
    cert, _ = pki.leaf(ROOT, ROOT_KEY, not_before=pki.NOW + timedelta(minutes=4))
    assert check(pki.der(cert)) == CLIENT


def test_identity_mismatch_names_both() -> None:
    """I-4: a valid cert for a different identity than expected is refused."""
    cert, _ = pki.leaf(ROOT, ROOT_KEY, uris=("spiffe://cluster.local/ns/demo/sa/neighbour",))
    with pytest.raises(PeerRejected, match="neighbour is not the expected .*client"):
        check(pki.der(cert), Purpose.SERVER, expected={CLIENT})


def test_malformed_der() -> None:
    with pytest.raises(PeerRejected) as err:
        check(b"\x30\x03garbage")
    assert err.value.reason is Reason.MALFORMED
