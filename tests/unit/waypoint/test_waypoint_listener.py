"""The waypoint's HBONE listener across certificate rotation and root rotation (RELIABILITY
F-8): a new certificate is loaded in place; a new trust bundle, or ticket keys grown old, get a
new context, on a new listener on the same port, and the old one stops accepting. Its cap on
connections (L-1)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from api.spiffe import SpiffeId
from common import tls
from controller.ca import authority
from tests import pki
from tests.unit.ztunnel.harness import refused_before_tls
from tests.waiting import until
from ztunnel.identity import schedule
from ztunnel.identity.manager import CertificateManager, WorkloadCertificate
from ztunnel.metrics import ProxyMetrics
from ztunnel.proxy import overload
from ztunnel.waypoint.metrics import RequestMetrics
from ztunnel.waypoint.proxy import WaypointProxy, WaypointSettings

WAYPOINT = SpiffeId("cluster.local", "demo", "waypoint")
NOW = datetime.now(UTC)


class Certs:
    def __init__(self, cert: WorkloadCertificate) -> None:
        self.cert = cert

    def current(self, identity: SpiffeId) -> WorkloadCertificate | None:
        return self.cert if identity == WAYPOINT else None


def certificate(root: Any, root_key: Any, serial_bump: int = 0) -> WorkloadCertificate:
    leaf, key = pki.live_leaf(root, root_key, f"spiffe://{WAYPOINT}")
    return WorkloadCertificate(
        identity=WAYPOINT,
        chain_pem=[authority.pem(leaf)],
        key_pem=authority.key_pem(key),
        bundle_pem=[authority.pem(root)],
        validity=schedule.Validity(leaf.not_valid_before_utc, leaf.not_valid_after_utc, NOW),
        serial=leaf.serial_number + serial_bump,
    )


def roots_in(ctx: ssl.SSLContext) -> set[str]:
    return {cert["subject"][0][0][1] for cert in ctx.get_ca_certs()}


def waypoint(certs: Certs) -> WaypointProxy:
    return WaypointProxy(
        WaypointSettings(listen_ip="127.0.0.1", hbone_port=0),
        lambda: None,
        cast(CertificateManager, certs),
        WAYPOINT,
        metrics=RequestMetrics(CollectorRegistry()),
        tcp_metrics=ProxyMetrics(CollectorRegistry()),
    )


def test_a_new_trust_bundle_gets_a_new_listener_on_the_same_port() -> None:
    old_root, old_key = pki.root(NOW, name="old root")
    new_root, _ = pki.root(NOW, name="new root")
    certs = Certs(certificate(old_root, old_key))

    async def main() -> None:
        proxy = waypoint(certs)
        await proxy.sync()
        first, port, ctx = proxy.server, proxy.port, proxy._ctx
        assert first is not None and ctx is not None
        certs.cert = certificate(old_root, old_key, serial_bump=1)  # rotation: same context
        await proxy.sync()
        assert (proxy.server, proxy._ctx) == (first, ctx)
        overlap = [*certs.cert.bundle_pem, authority.pem(new_root)]
        certs.cert = dataclasses.replace(certs.cert, bundle_pem=overlap)
        await proxy.sync()
        assert proxy.server is not first and proxy.port == port and not first.is_serving()
        assert proxy._ctx is not None and roots_in(proxy._ctx) == {"old root", "new root"}
        certs.cert = dataclasses.replace(certs.cert, bundle_pem=[authority.pem(new_root)])
        await proxy.sync()
        assert roots_in(proxy._ctx) == {"new root"}, "the removed root must not be trusted"
        await proxy.close(0.1)

    asyncio.run(main())


def test_old_ticket_keys_get_a_new_context_on_the_same_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, root_key = pki.root(NOW)
    certs = Certs(certificate(root, root_key))

    async def main() -> None:
        proxy = waypoint(certs)
        await proxy.sync()
        first, port, ctx = proxy.server, proxy.port, proxy._ctx
        assert first is not None
        await proxy.sync()
        assert (proxy.server, proxy._ctx) == (first, ctx), "young keys: kept"
        monkeypatch.setattr(tls, "TICKET_KEY_LIFETIME_S", 0.0)
        await proxy.sync()
        assert proxy._ctx is not ctx and proxy.port == port and not first.is_serving()
        await proxy.close(0.1)

    asyncio.run(main())


def test_past_its_cap_the_waypoint_refuses_before_tls_and_failed_handshakes_are_forgotten() -> None:
    """L-1: connections count against the waypoint's cap from accept; past it a connection is
    reset before any TLS byte. A failed handshake's connection is forgotten (it used to stay
    in the set of connections told to go away at shutdown, for ever)."""
    root, root_key = pki.root(NOW)
    certs = Certs(certificate(root, root_key))

    async def main() -> None:
        proxy = waypoint(certs)
        proxy.settings = dataclasses.replace(proxy.settings, max_tunnels=1)
        await proxy.sync()
        address = ("127.0.0.1", proxy.port)
        for _ in range(3):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection(
                    *address, ssl=tls.client_context([]), server_hostname=""
                )
        await until(lambda: not proxy._conns and not proxy._held)
        assert not proxy._conns and not proxy._held
        _, held = await asyncio.open_connection(*address)  # handshaking: holds the only slot
        await until(lambda: proxy._held == 1)
        assert await refused_before_tls(address) == b"RST"
        held.close()
        await proxy.close(0.1)

    asyncio.run(main())


def rejections(proxy: WaypointProxy, reason: str) -> float:
    return sum(
        sample.value
        for metric in proxy.tcp_metrics.rejected.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["reason"] == reason
    )


def gauge(proxy: WaypointProxy) -> float:
    (metric,) = proxy.tcp_metrics.memory_stage.collect()
    return float(metric.samples[0].value)


def test_under_memory_pressure_the_waypoint_refuses_before_tls_and_recovers() -> None:
    """L-6: from 95 % of its memory limit the waypoint takes no new connection (reset before
    TLS, counted as memory_pressure), as ztunnel does; below it, it accepts again."""
    root, root_key = pki.root(NOW)
    certs = Certs(certificate(root, root_key))

    async def main() -> None:
        proxy = waypoint(certs)
        await proxy.sync()
        address = ("127.0.0.1", proxy.port)
        proxy.on_memory(overload.Usage(96, 100))
        assert gauge(proxy) == overload.Stage.REFUSE_NEW
        assert await refused_before_tls(address) == b"RST"
        assert rejections(proxy, "memory_pressure") == 1
        proxy.on_memory(overload.Usage(50, 100))
        assert gauge(proxy) == overload.Stage.NORMAL
        _, held = await asyncio.open_connection(*address)
        await until(lambda: proxy._held == 1)  # admitted: handshaking
        held.close()
        await proxy.close(0.1)

    asyncio.run(main())
