"""The CA's CRL, published to every proxy (RELIABILITY I-9): `ca-crl.pem` beside the CA's
signing certificate (Istio's plugged-in CA layout), read again whenever it changes.

A CRL that does not parse, is too large or is not signed by the CA's signing certificate is
refused with a one-line reason and a count (`ambientmesh_controller_crl_errors_total`); the last
good one stays published. Removing the file withdraws the CRL: revocation checks stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from common.crl import CrlError, parse
from controller.ca.authority import CaMaterial

log = logging.getLogger("controller.ca")

CRL_FILE = "ca-crl.pem"
POLL_S = 2.0  # as the store watcher; a mounted Secret changes in place


class CrlMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "ambientmesh_controller_crl_errors_total",
            "CRLs refused (unparsable, too large, or not signed by the CA)",
            registry=registry,
        )
        self.revoked = Gauge(
            "ambientmesh_controller_crl_revoked",
            "Serial numbers on the published CRL (absent CRL: 0)",
            registry=registry,
        )


class CrlSource:
    def __init__(self, path: Path, material: CaMaterial, metrics: CrlMetrics) -> None:
        self.path, self.material, self.metrics = path, material, metrics
        self.published: str | None = None
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) last read

    def poll(self) -> tuple[bool, str | None]:
        """Whether what should be published changed, and what it is now."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen = None
            changed, self.published = self.published is not None, None
            self.metrics.revoked.set(0)
            return changed, None
        if (stat.st_mtime_ns, stat.st_size) == self._seen:
            return False, self.published
        self._seen = (stat.st_mtime_ns, stat.st_size)
        try:
            pem = self.path.read_text()
            crl = parse(pem, [self.material.signing_cert])
        except (OSError, UnicodeDecodeError, CrlError) as exc:
            self.metrics.errors.inc()
            log.warning("%s refused, the last good CRL stays published: %s", self.path, exc)
            return False, self.published
        changed, self.published = pem != self.published, pem
        self.metrics.revoked.set(len(crl.revoked))
        if changed:
            log.info("publishing the CRL of %s: %d revoked", self.path, len(crl.revoked))
        return changed, pem

    async def run(self, publish: Callable[[str | None], Awaitable[None]]) -> None:
        while True:
            changed, pem = self.poll()
            if changed:
                await publish(pem)
            await asyncio.sleep(POLL_S)
