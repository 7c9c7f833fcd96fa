"""RELIABILITY I-9: the CA's CRL refuses revoked peers, closes open connections to them when it
arrives, fails closed while its status is unknown, and a CRL no trusted CA signed changes
nothing (the last good one stays)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import pytest

from common.crl import CrlError
from controller.ca import authority
from tests import pki
from ztunnel.identity.revocation import Revocations

NOW = pki.NOW
ROOT, ROOT_KEY = pki.root()
OTHER, OTHER_KEY = pki.root(name="other root")
BUNDLE = [authority.pem(ROOT)]
A, _ = pki.live_leaf(ROOT, ROOT_KEY, "spiffe://test/ns/a/sa/a")
B, _ = pki.live_leaf(ROOT, ROOT_KEY, "spiffe://test/ns/b/sa/b")
FOREIGN, _ = pki.live_leaf(OTHER, OTHER_KEY, "spiffe://test/ns/c/sa/c")


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def refusals(r: Revocations, now: Any = NOW) -> tuple[str, str, str]:
    a, b, foreign = (r.check(c, now).refusal for c in (A, B, FOREIGN))
    return a, b, foreign


def test_no_crl_means_no_checks() -> None:
    assert refusals(Revocations()) == ("", "", "")


def test_a_revoked_serial_is_refused_and_only_for_its_issuer() -> None:
    r = Revocations()
    r.configure(pki.crl(ROOT, ROOT_KEY, [A.serial_number]), BUNDLE, NOW)
    assert refusals(r) == ("revoked", "", "")


def test_a_crl_no_trusted_ca_signed_is_refused_and_the_last_good_one_stays() -> None:
    r = Revocations()
    r.configure(pki.crl(ROOT, ROOT_KEY, [A.serial_number]), BUNDLE, NOW)
    forged = pki.crl(ROOT, OTHER_KEY, [])  # the root's name, another key: un-revokes nothing
    with pytest.raises(CrlError, match="signed by no trusted CA"):
        r.configure(forged, BUNDLE, NOW)
    assert refusals(r) == ("revoked", "", "")
    with pytest.raises(CrlError, match="not a PEM CRL"):
        r.configure("-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n", BUNDLE, NOW)
    assert refusals(r) == ("revoked", "", "")


@pytest.mark.parametrize(
    ("issuers", "later", "expected"),
    [
        ([], NOW, ("revocation_unknown",) * 3),  # configured, never verified: all unknown
        (BUNDLE, NOW + timedelta(days=8), ("revocation_unknown", "revocation_unknown", "")),
        (BUNDLE, NOW + timedelta(days=6), ("", "", "")),
    ],
)
def test_unknown_status_fails_closed_for_the_issuer_it_covers(
    issuers: list[str], later: Any, expected: tuple[str, str, str]
) -> None:
    """Never verified (no trusted issuer yet), or past its nextUpdate (7 days here)."""
    r = Revocations()
    with pytest.raises(CrlError) if not issuers else contextlib.nullcontext():
        r.configure(pki.crl(ROOT, ROOT_KEY, []), issuers, NOW)
    assert refusals(r, later) == expected


def test_a_new_crl_closes_open_connections_to_the_peers_it_revokes() -> None:
    r = Revocations()
    r.configure(pki.crl(ROOT, ROOT_KEY, []), BUNDLE, NOW)
    to_a, to_b, gone = Transport(), Transport(), Transport()
    r.watch(to_a, A)
    r.watch(to_b, B)
    r.watch(gone, A)
    gone.aborted = True  # closed meanwhile: forgotten, not closed again
    assert r.configure(pki.crl(ROOT, ROOT_KEY, [A.serial_number]), BUNDLE, NOW) == 1
    assert (to_a.aborted, to_b.aborted) == (True, False)
    assert r.configure(None, BUNDLE, NOW) == 0, "a withdrawn CRL revokes nothing"
    assert refusals(r) == ("", "", "")
