"""L-5: 500 identities on one node at startup: bounded CA concurrency, all certificates within a
bound, a request a connection waits on served before the queue of first fetches, and the 500
renewals spread out rather than all at once."""

from __future__ import annotations

import asyncio
import bisect
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.spiffe import SpiffeId
from tests import pki
from ztunnel.identity import schedule
from ztunnel.identity.caclient import Issued
from ztunnel.identity.manager import CA_CONCURRENCY, CertificateManager

N = 500
BOUND_S = 20.0  # all 500 certificates with a 10 ms CA latency and 8 CSRs in flight


def _pem(cert: Any) -> str:
    return str(cert.public_bytes(serialization.Encoding.PEM).decode())


class FakeCa:
    def __init__(self, delay_s: float = 0.01) -> None:
        self.root, self.root_key = pki.root(datetime.now(UTC))
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.order: list[str] = []

    def set_bundle(self, bundle: list[str]) -> None:
        pass

    async def sign(self, identity: SpiffeId, key: ec.EllipticCurvePrivateKey, ttl_s: int) -> Issued:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            now = datetime.now(UTC)
            leaf, _ = pki.leaf(
                self.root,
                self.root_key,
                uris=(str(identity),),
                not_before=now - timedelta(minutes=1),
                not_after=now + timedelta(seconds=ttl_s),
            )
            self.order.append(str(identity))
            return Issued([_pem(leaf)], [_pem(self.root)], leaf)
        finally:
            self.in_flight -= 1


def _ids() -> list[SpiffeId]:
    return [SpiffeId.parse(f"spiffe://cluster.local/ns/n/sa/sa{i}") for i in range(N)]


async def _many() -> None:
    ca = FakeCa()
    manager = CertificateManager(ca, ttl_s=3600)  # type: ignore[arg-type]
    ids = _ids()
    loop = asyncio.get_running_loop()
    start = loop.time()
    manager.track(ids)
    await asyncio.wait_for(asyncio.gather(*(manager.get(i) for i in ids)), BOUND_S)
    assert loop.time() - start < BOUND_S
    assert all(manager.current(i) is not None for i in ids)
    assert 1 < ca.max_in_flight <= CA_CONCURRENCY
    # Fetched within seconds of each other, they renew spread over 2% of the lifetime (an
    # hour here: 72 s), not in one burst: no 10 s window holds more than a fifth of them.
    renewals = sorted(
        schedule.refresh_at(cert.validity, cert.validity.received)
        for i in ids
        if (cert := manager.current(i)) is not None
    )
    window = timedelta(seconds=10)
    densest = max(
        bisect.bisect_right(renewals, start + window) - n for n, start in enumerate(renewals)
    )
    assert densest < N / 5, f"{densest} of {N} renewals within {window}"
    manager.track([])


async def _on_demand() -> None:
    ca = FakeCa()
    manager = CertificateManager(ca, ttl_s=3600)  # type: ignore[arg-type]
    ids = _ids()
    manager.track(ids[:-1])
    await asyncio.sleep(0.05)
    queued = manager.csrs.waiting()
    assert queued > 400, "the warm-up queue is long when the connection comes"
    late = ids[-1]
    await manager.get(late)
    # served next: after at most the CSRs already in flight, before every queued one
    assert ca.order.index(str(late)) <= len(ids) - 1 - queued + CA_CONCURRENCY
    manager.track([])


def test_500_identities_bounded_concurrency_and_time() -> None:
    asyncio.run(_many())


def test_on_demand_served_before_background_queue() -> None:
    asyncio.run(_on_demand())
