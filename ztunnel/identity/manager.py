"""The certificate manager: one certificate per local workload identity, fresh, never expired.

`track(identities)` keeps a worker per identity that fetches at once, renews at half-life, retries
with jittered capped backoff while keeping a still-valid certificate, and drops a certificate the
moment it expires (fail closed: no certificate means that identity's traffic is refused).
`get(identity)` serves the proxy on demand. Fetches share a bounded CA concurrency, by priority
(L-5, `csrqueue`): one a connection waits on first, then first certificates, then renewals;
renewals are spread by a jitter drawn per certificate. Decisions are in `schedule` (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from api.spiffe import SpiffeId
from common.keys import key_pem, new_key
from ztunnel.identity import schedule
from ztunnel.identity.caclient import CaClient, CaError
from ztunnel.identity.csrqueue import CsrQueue, Priority

log = logging.getLogger("ztunnel.identity")

CA_CONCURRENCY = 8  # parallel CSRs per ztunnel
GET_TIMEOUT_S = 10.0  # how long an on-demand caller waits for a first certificate


class CertificateUnavailable(Exception):
    """No valid certificate for an identity right now (traffic for it must be refused)."""


@dataclass(frozen=True)
class WorkloadCertificate:
    identity: SpiffeId
    chain_pem: list[str]
    key_pem: bytes
    bundle_pem: list[str]
    validity: schedule.Validity
    serial: int
    issuer: x509.Name | None = None  # of the leaf: what a CRL names (None: not judged)


@dataclass
class _Slot:
    cert: WorkloadCertificate | None = None
    failures: int = 0
    backoff: int = 0  # failures since the last success or expiry: what the retry delay grows on
    retry_at: datetime | None = None
    last_error: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    demanded: bool = False  # a connection waits for a certificate of this identity
    task: asyncio.Task[None] | None = None


def now() -> datetime:
    return datetime.now(UTC)


class CertificateManager:
    def __init__(
        self,
        ca: CaClient,
        *,
        ttl_s: int,
        clock: Callable[[], datetime] = now,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.ca = ca
        self.ttl_s = ttl_s
        self.clock = clock
        self.jitter = jitter
        self._slots: dict[SpiffeId, _Slot] = {}
        self.csrs = CsrQueue(CA_CONCURRENCY)
        # Called when an identity's certificate expires with no replacement: connections that
        # were authenticated with it must end (RELIABILITY F-7, "close at not_after").
        self.on_expired: list[Callable[[SpiffeId], None]] = []

    def track(self, identities: Iterable[SpiffeId]) -> None:
        """Keep exactly these identities: start new workers, stop and forget the others."""
        wanted = set(identities)
        for identity in list(self._slots):
            if identity not in wanted:
                self._forget(identity)
        for identity in wanted - self._slots.keys():
            slot = self._slots[identity] = _Slot()
            slot.task = asyncio.create_task(self._worker(identity, slot), name=f"cert {identity}")

    def _forget(self, identity: SpiffeId) -> None:
        slot = self._slots.pop(identity)
        if slot.task:
            slot.task.cancel()
        log.info("dropped certificate of %s (no local workload uses it)", identity)

    def current(self, identity: SpiffeId) -> WorkloadCertificate | None:
        """The usable certificate, or None (never an expired one)."""
        slot = self._slots.get(identity)
        if slot is None or slot.cert is None:
            return None
        return slot.cert if schedule.usable(slot.cert.validity, self.clock()) else None

    async def get(self, identity: SpiffeId) -> WorkloadCertificate:
        if identity not in self._slots:
            self.track([*self._slots, identity])
        slot = self._slots[identity]
        if (cert := self.current(identity)) is not None:
            return cert
        self.csrs.promote(identity, Priority.REALTIME)
        slot.demanded = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot.ready.wait(), GET_TIMEOUT_S)
        if (cert := self.current(identity)) is None:
            raise CertificateUnavailable(f"{identity}: {slot.last_error or 'not issued yet'}")
        return cert

    async def _worker(self, identity: SpiffeId, slot: _Slot) -> None:
        while True:
            at = self.clock()
            due = slot.cert is None or at >= schedule.refresh_at(slot.cert.validity, at)
            if due and (slot.retry_at is None or at >= slot.retry_at):
                await self._fetch(identity, slot)
            if slot.cert is not None and not schedule.usable(slot.cert.validity, self.clock()):
                log.error(
                    "certificate of %s expired with no replacement: refusing its traffic", identity
                )
                slot.cert = None
                slot.ready.clear()
                # Retries quickened near the expiry (schedule.retry_delay); without a
                # certificate they start over from the first delay, not from where that left
                # the exponent — a CA back a moment later must not wait minutes.
                slot.backoff = 0
                slot.retry_at = self.clock() + schedule.retry_delay(1, self.jitter())
                for callback in self.on_expired:
                    callback(identity)
            validity = slot.cert.validity if slot.cert else None
            wake = schedule.next_wakeup(validity, slot.retry_at, self.clock())
            await asyncio.sleep(max((wake - self.clock()).total_seconds(), 0.01))

    async def _fetch(self, identity: SpiffeId, slot: _Slot) -> None:
        key = new_key()
        if slot.demanded and self.current(identity) is None:
            priority = Priority.REALTIME
        else:
            priority = Priority.WARMUP if slot.cert is None else Priority.BACKGROUND
        try:
            async with self.csrs.slot(identity, priority):
                issued = await self.ca.sign(identity, key, self.ttl_s)
        except CaError as exc:
            slot.failures += 1
            slot.backoff += 1
            slot.last_error = str(exc)
            now = self.clock()
            left = slot.cert.validity.not_after - now if slot.cert else None
            slot.retry_at = now + schedule.retry_delay(slot.backoff, self.jitter(), left)
            keep = "keeping the current one" if self.current(identity) else "none held"
            log.warning(
                "certificate for %s failed (%d in a row, %s): %s",
                identity,
                slot.failures,
                keep,
                exc,
            )
            return
        self.ca.set_bundle(issued.bundle_pem)  # follow root rotation
        slot.cert = WorkloadCertificate(
            identity,
            issued.chain_pem,
            key_pem(key),
            issued.bundle_pem,
            schedule.Validity(
                issued.leaf.not_valid_before_utc,
                issued.leaf.not_valid_after_utc,
                self.clock(),
                self.jitter(),
            ),
            issued.leaf.serial_number,
            issued.leaf.issuer,
        )
        slot.failures, slot.backoff, slot.retry_at, slot.last_error = 0, 0, None, ""
        slot.demanded = False
        slot.ready.set()
        log.info(
            "certificate for %s: serial %x, valid until %s",
            identity,
            issued.leaf.serial_number,
            issued.leaf.not_valid_after_utc.isoformat(),
        )

    def renew_revoked(self, revoked: Callable[[x509.Name, int], bool]) -> list[SpiffeId]:
        """Drop our certificates that a CRL now revokes, and ask for new ones at once
        (RELIABILITY I-9: every peer refuses a revoked certificate, so waiting for its
        rotation would cut the identity off until then). Connections authenticated with one
        end, as at expiry (`on_expired`). Returns the identities renewed."""
        renewed = []
        for identity, slot in self._slots.items():
            cert = slot.cert
            if cert is None or cert.issuer is None or not revoked(cert.issuer, cert.serial):
                continue
            log.warning(
                "certificate of %s (serial %x) is revoked: requesting a new one",
                identity,
                cert.serial,
            )
            slot.cert = None
            slot.ready.clear()
            slot.backoff, slot.retry_at = 0, None
            if slot.task:
                slot.task.cancel()  # it may be asleep until the old certificate's refresh
            slot.task = asyncio.create_task(self._worker(identity, slot), name=f"cert {identity}")
            renewed.append(identity)
        for identity in renewed:
            for callback in self.on_expired:
                callback(identity)
        return renewed

    def pending(self) -> list[str]:
        return sorted(str(i) for i in self._slots if self.current(i) is None)

    def ca_pems(self) -> list[str]:
        """The CA certificates held certificates rely on: bundle roots, chain intermediates."""
        found: dict[str, None] = {}
        for identity in self._slots:
            if (cert := self.current(identity)) is not None:
                found.update(dict.fromkeys([*cert.bundle_pem, *cert.chain_pem[1:]]))
        return list(found)

    def dump(self) -> list[dict[str, Any]]:
        """For /config_dump: public parts only (never the key)."""
        out = []
        for identity, slot in sorted(self._slots.items()):
            cert = self.current(identity)
            out.append(
                {
                    "identity": str(identity),
                    "state": "Available"
                    if cert
                    else ("Unavailable" if slot.failures else "Initializing"),
                    "failures": slot.failures,
                    "lastError": slot.last_error,
                    "certChain": cert.chain_pem if cert else [],
                    "trustBundle": cert.bundle_pem if cert else [],
                }
            )
        return out

    async def close(self) -> None:
        for identity in list(self._slots):
            self._forget(identity)
        await asyncio.sleep(0)
