"""Certificate revocation (RELIABILITY I-9): the CA's CRL, as the controller streams it, checked
on every peer's leaf after each handshake, and on every open connection when it changes.

The CRL is Istio's plugged-in CA's `ca-crl.pem`. A proxy trusts it only once its signature
verifies against a CA certificate it already trusts (the roots of its trust bundle and the
intermediates of its own chains) and it names that certificate as its issuer. It covers the
leaves of that issuer; leaves of another issuer (a CA being rotated in) are the trust bundle's
business alone.

Unknown status, the case Istio's ztunnel fails open on, fails closed here: with a CRL configured
but none usable (not verified yet, or past its nextUpdate), peers of the covered issuer are
refused (`revocation_unknown`), because a CRL that cannot be read would otherwise un-revoke
every certificate on it. No CRL configured: no checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from common.crl import Crl, CrlError, parse

log = logging.getLogger("ztunnel.identity")


@dataclass(frozen=True)
class Verdict:
    """Why a leaf must be refused ("" if it may pass): `revoked` or `revocation_unknown`."""

    refusal: str


@dataclass
class _Watched:
    transport: Any
    issuer: x509.Name
    serial: int


class Revocations:
    def __init__(self) -> None:
        self._pem: str | None = None  # the CRL configured (None: revocation off)
        self._crl: Crl | None = None  # the last one that verified
        self._issuer_pems: tuple[str, ...] = ()
        self._watched: dict[int, _Watched] = {}
        self._sweep_at = 1024

    def configure(self, pem: str | None, issuers_pem: Iterable[str], now: datetime) -> int:
        """A new CRL (or None: revocation off) and/or the CA certificates that may sign it.
        A CRL that does not verify leaves the last good one in force (CrlError raised after).
        Returns how many open connections were closed."""
        pems = tuple(issuers_pem)
        if pem == self._pem and pems == self._issuer_pems:  # every housekeeping pass: no parse
            return self.recheck(now)
        self._pem, self._issuer_pems = pem, pems
        issuers = tuple(_certificates(pems))
        error: CrlError | None = None
        if pem is None:
            self._crl = None
        else:
            try:
                self._crl = parse(pem, issuers)
            except CrlError as exc:
                error = exc  # the previous good CRL, if any, stays
        closed = self.recheck(now)
        if error is not None:
            raise error
        return closed

    def verdict(self, issuer: x509.Name, serial: int, now: datetime) -> Verdict:
        if self._pem is None:
            return Verdict("")
        crl = self._crl
        if crl is None or (crl.next_update is not None and now >= crl.next_update):
            covered = crl.issuer if crl is not None else None
            if covered is None or covered == issuer:
                return Verdict("revocation_unknown")
            return Verdict("")
        if issuer == crl.issuer and serial in crl.revoked:
            return Verdict("revoked")
        return Verdict("")

    def check(self, cert: x509.Certificate, now: datetime) -> Verdict:
        return self.verdict(cert.issuer, cert.serial_number, now)

    def watch(self, transport: Any, cert: x509.Certificate) -> None:
        """Keep an open connection's peer in view: a later CRL that revokes it closes it."""
        if len(self._watched) >= self._sweep_at:  # closed ones go, amortized
            self._sweep()
            self._sweep_at = max(1024, 2 * len(self._watched))
        self._watched[id(transport)] = _Watched(transport, cert.issuer, cert.serial_number)

    def recheck(self, now: datetime) -> int:
        self._sweep()
        if self._pem is None:
            return 0
        closed = 0
        for key, held in list(self._watched.items()):
            refusal = self.verdict(held.issuer, held.serial, now).refusal
            if not refusal:
                continue
            del self._watched[key]
            log.warning("closing a connection: its peer's certificate is %s", refusal)
            held.transport.abort()
            closed += 1
        return closed

    def _sweep(self) -> None:
        for key in [k for k, w in self._watched.items() if w.transport.is_closing()]:
            del self._watched[key]


def _certificates(pems: Iterable[str]) -> Iterable[x509.Certificate]:
    for pem in pems:
        try:
            yield x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            continue


# This process's CRL: a proxy has one CA and one list, configured by its main from the config
# stream (`follow`), consulted by every TLS endpoint through `verify.verify_transport`.
current = Revocations()


class OwnCertificates(Protocol):
    """What `follow` needs of a proxy's certificate manager."""

    def ca_pems(self) -> list[str]: ...
    def renew_revoked(self, revoked: Callable[[x509.Name, int], bool]) -> Any: ...


def follow(pem: str | None, certs: OwnCertificates, refused: Callable[[], None]) -> None:
    """Configure `current` with the config's CRL and the CA certificates this proxy trusts;
    called on every config version and periodically (issuers change, a CRL goes stale). Our
    own certificates that it revokes are renewed at once. Before this proxy holds a
    certificate it has no CA to judge a CRL by, and no connection."""
    ca_pems = certs.ca_pems()
    if pem is not None and not ca_pems:
        return
    now = datetime.now(UTC)
    try:
        closed = current.configure(pem, ca_pems, now)
    except CrlError as exc:
        refused()
        log.warning("CRL refused, the last good one (if any) stays: %s", exc)
        closed = 0
    if closed:
        log.info("closed %d connections whose peer's certificate is revoked", closed)
    certs.renew_revoked(
        lambda issuer, serial: current.verdict(issuer, serial, now).refusal == "revoked"
    )
