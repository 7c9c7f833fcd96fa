"""The proxy end to end in one process (no root): SOCKS5 → ztunnel(node1) → HBONE/mTLS →
ztunnel(node2) → pod, with policy, metrics, pooling, half-close and fail-closed behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from common import tls
from controller.ca import authority
from tests import pki
from tests.unit.ztunnel.harness import (
    ECHO_PORT,
    Mesh,
    mesh,
    refused_before_tls,
    roundtrip,
    workloads_identity,
)
from tests.waiting import until
from ztunnel.identity import revocation
from ztunnel.proxy import sockets
from ztunnel.proxy.relay import Tunnel
from ztunnel.proxy.splice import Held, Splice

# The destination's labels for a client → server connection.
DST_LABELS = {
    "reporter": "destination",
    "source_workload": "client",
    "source_workload_namespace": "mesh",
    "source_principal": "spiffe://cluster.local/ns/mesh/sa/client",
    "destination_workload": "server",
    "destination_workload_namespace": "mesh",
    "destination_principal": "spiffe://cluster.local/ns/mesh/sa/server",
    "destination_service": "unknown",
    "request_protocol": "tcp",
    "response_flags": "-",
    "connection_security_policy": "mutual_tls",
}


def run(state_dir: Path, body: Callable[[Mesh], Awaitable[None]]) -> None:
    del state_dir

    async def main() -> None:
        async with mesh() as m:
            await asyncio.wait_for(body(m), 30)

    asyncio.run(main())


def test_bytes_cross_intact_both_ways_and_the_server_sees_the_client_ip(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        payload = bytes(range(256)) * 4096  # 1 MiB
        assert await roundtrip(m, payload) == payload.upper() + b"|EOF"
        assert m.echo.peers == [m.client_ip]

    run(state_dir, body)


def test_metrics_count_the_connection_with_principals(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        await roundtrip(m, b"hello")
        await asyncio.sleep(0.05)
        labels = DST_LABELS
        assert m.metric("node2", "istio_tcp_connections_opened_total", **labels) == 1
        assert m.metric("node2", "istio_tcp_connections_closed_total", **labels) == 1
        assert m.metric("node2", "istio_tcp_received_bytes_total", **labels) == 5
        assert m.metric("node2", "istio_tcp_sent_bytes_total", **labels) == 9
        source = {**labels, "reporter": "source"}
        assert m.metric("node1", "istio_tcp_connections_opened_total", **source) == 1

    run(state_dir, body)


def test_new_connections_reuse_one_hbone_connection(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        for i in range(20):
            assert await roundtrip(m, b"x%d" % i) == b"X%d|EOF" % i
        assert m.proxies["node1"].pool.dials == 1

    run(state_dir, body)


def test_a_new_hbone_connection_to_the_same_peer_resumes_its_tls_session(
    state_dir: Path,
) -> None:
    """A pool dial after the first resumes (common.tls), and the destination still judges the
    source by the certificate of the session: its principal is in the metrics and policy."""

    async def body(m: Mesh) -> None:
        assert await roundtrip(m, b"one") == b"ONE|EOF"
        m.proxies["node1"].pool.close()  # GOAWAY: the next connection needs a new dial
        assert await roundtrip(m, b"two") == b"TWO|EOF"
        assert m.proxies["node1"].pool.dials == 2
        assert m.metric("node1", "ambientmesh_ztunnel_hbone_dials_total", resumed="false") == 1
        assert m.metric("node1", "ambientmesh_ztunnel_hbone_dials_total", resumed="true") == 1
        await asyncio.sleep(0.05)
        opened = m.metric(
            "node2",
            "istio_tcp_connections_opened_total",
            reporter="destination",
            source_workload="client",
            source_workload_namespace="mesh",
            source_principal="spiffe://cluster.local/ns/mesh/sa/client",
            destination_workload="server",
            destination_workload_namespace="mesh",
            destination_principal="spiffe://cluster.local/ns/mesh/sa/server",
            destination_service="unknown",
            request_protocol="tcp",
            response_flags="-",
            connection_security_policy="mutual_tls",
        )
        assert opened == 2

    run(state_dir, body)


def test_old_ticket_keys_are_replaced_and_their_tickets_no_longer_resume(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL never rotates a context's ticket keys: node2's listener gets a new context once
    they are TICKET_KEY_LIFETIME_S old, node1's ticket from the old keys then fails to resume
    (a full handshake), and the new keys' tickets resume again."""

    async def body(m: Mesh) -> None:
        def dials(resumed: str) -> float:
            return m.metric("node1", "ambientmesh_ztunnel_hbone_dials_total", resumed=resumed)

        assert await roundtrip(m, b"one") == b"ONE|EOF"
        before = m.proxies["node2"].hbone[m.server_ip]
        monkeypatch.setattr(tls, "TICKET_KEY_LIFETIME_S", 0.0)
        await m.proxies["node2"].sync_hbone_listeners()
        monkeypatch.setattr(tls, "TICKET_KEY_LIFETIME_S", 3600.0)
        after = m.proxies["node2"].hbone[m.server_ip]
        assert after.ctx is not before.ctx and not before.server.is_serving()
        m.proxies["node1"].pool.close()
        assert await roundtrip(m, b"two") == b"TWO|EOF"
        assert (dials("false"), dials("true")) == (2, 0), "a ticket of the old keys resumed"
        m.proxies["node1"].pool.close()
        assert await roundtrip(m, b"three") == b"THREE|EOF"
        assert (dials("false"), dials("true")) == (2, 1)

    run(state_dir, body)


def test_a_crl_cuts_open_tunnels_to_a_revoked_peer_and_refuses_new_ones(
    state_dir: Path,
) -> None:
    """RELIABILITY I-9 through both ztunnels: the CA's CRL revoking the server's certificate
    closes the tunnel already open to it and refuses the next (`peer_revoked` at node1);
    withdrawn, traffic flows again."""

    async def body(m: Mesh) -> None:
        held = m.managers["node2"].current(workloads_identity(m, "node2", m.server_ip))
        assert held is not None
        serial = x509.load_pem_x509_certificate(held.chain_pem[0].encode()).serial_number
        ca = m.controller.material
        revoking = pki.crl(ca.signing_cert, ca.signing_key, [serial], now=datetime.now(UTC))
        reader, writer, code = await m.socks(m.server)
        assert code == 0
        writer.write(b"open")
        assert await reader.readexactly(4) == b"OPEN"
        try:
            revocation.follow(revoking, m.managers["node1"], lambda: None)
            with pytest.raises(ConnectionResetError):  # cut, not ended cleanly
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            _, writer, code = await m.socks(m.server)
            writer.close()
            assert code != 0
            refused = {"direction": "outbound", "reason": "peer_revoked"}
            assert m.metric("node1", "ambientmesh_ztunnel_rejections_total", **refused) >= 1
            revocation.follow(None, m.managers["node1"], lambda: None)
            assert await roundtrip(m, b"again") == b"AGAIN|EOF"
        finally:
            revocation.follow(None, m.managers["node1"], lambda: None)

    run(state_dir, body)


def test_a_proxy_whose_own_certificate_is_revoked_gets_a_new_one_at_once(
    state_dir: Path,
) -> None:
    """RELIABILITY I-9 on our own side: node2 following a CRL that revokes its certificate
    for the server drops it and asks for a new one at once (every peer refuses the revoked
    one), so tunnels to the server work again without waiting for its rotation."""

    async def body(m: Mesh) -> None:
        identity = workloads_identity(m, "node2", m.server_ip)
        held = m.managers["node2"].current(identity)
        assert held is not None and held.issuer is not None
        ca = m.controller.material
        revoking = pki.crl(ca.signing_cert, ca.signing_key, [held.serial], now=datetime.now(UTC))
        try:
            revocation.follow(revoking, m.managers["node2"], lambda: None)
            assert m.managers["node2"].current(identity) is None, "a revoked certificate stays"
            renewed = await m.managers["node2"].get(identity)
            assert renewed.serial != held.serial
            await m.proxies["node2"].sync_hbone_listeners()
            m.proxies["node1"].pool.close()
            assert await roundtrip(m, b"renewed") == b"RENEWED|EOF"
        finally:
            revocation.follow(None, m.managers["node1"], lambda: None)

    run(state_dir, body)


def test_a_root_rotation_reaches_the_hbone_listener_without_an_outage(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELIABILITY F-8 at node2's listener: a bundle that adds a new root serves on (overlap);
    once the old root leaves the bundle, node1's client certificate, issued by it, is refused.
    A context's trust store only grows, so each bundle gets a new listener (SO_REUSEPORT)."""

    async def body(m: Mesh) -> None:
        identity = workloads_identity(m, "node2", m.server_ip)
        manager = m.managers["node2"]
        issued = manager.current(identity)
        assert issued is not None
        new_root = authority.pem(authority.generate_root("cluster.local", datetime.now(UTC))[0])
        bundle = [issued.bundle_pem]

        def current(wanted: Any) -> Any:
            cert = real(wanted)
            if wanted != identity or cert is None:
                return cert
            return dataclasses.replace(cert, bundle_pem=bundle[0])

        real = manager.current
        monkeypatch.setattr(manager, "current", current)
        before = m.proxies["node2"].hbone[m.server_ip]
        m.proxies["node1"].pool.close()  # each step dials anew
        bundle[0] = [*issued.bundle_pem, new_root]  # overlap: both roots
        await m.proxies["node2"].sync_hbone_listeners()
        after = m.proxies["node2"].hbone[m.server_ip]
        assert after.ctx is not before.ctx and not before.server.is_serving()
        assert await roundtrip(m, b"overlap") == b"OVERLAP|EOF"
        m.proxies["node1"].pool.close()
        bundle[0] = [new_root]  # the old root removed
        await m.proxies["node2"].sync_hbone_listeners()
        _, writer, code = await m.socks(m.server)
        writer.close()
        assert code != 0, "a leaf of the removed root was accepted"
        # TLS 1.3: node2 refuses the client certificate after node1's side of the handshake,
        # so node1 sees its tunnel closed unanswered (and its retries too).
        refused = {"direction": "outbound", "reason": "hbone_status_0"}
        assert m.metric("node1", "ambientmesh_ztunnel_rejections_total", **refused) == 1

    run(state_dir, body)


def test_deny_policy_refuses_and_counts_the_reason(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        m.update(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-client", "namespace": "mesh"},
                "spec": {
                    "action": "DENY",
                    "rules": [
                        {"from": [{"source": {"principals": ["cluster.local/ns/mesh/sa/client"]}}]}
                    ],
                },
            }
        )
        _, writer, code = await m.socks(m.server)
        writer.close()
        assert code == 2  # SOCKS "not allowed by ruleset"
        assert (
            m.metric(
                "node2",
                "ambientmesh_ztunnel_rejections_total",
                direction="inbound",
                reason="denied_by_policy",
            )
            == 1
        )
        assert m.echo.peers == []

    run(state_dir, body)


def test_policy_change_closes_an_open_connection(state_dir: Path) -> None:
    """F-10: ALLOW → DENY while a connection is open: it is closed promptly."""

    async def body(m: Mesh) -> None:
        reader, writer, code = await m.socks(m.server)
        assert code == 0
        writer.write(b"before")
        assert await reader.readexactly(6) == b"BEFORE"
        m.update(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-all", "namespace": "mesh"},
                "spec": {"action": "DENY", "rules": [{}]},
            }
        )
        with pytest.raises(ConnectionResetError):  # reset: never the echo's clean |EOF
            await asyncio.wait_for(reader.read(), 5)
        writer.close()

    run(state_dir, body)


def test_non_mesh_destination_is_passed_through_in_plaintext(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        assert await roundtrip(m, b"plain", (m.plain_ip, ECHO_PORT)) == b"PLAIN|EOF"
        assert m.proxies["node1"].pool.dials == 0

    run(state_dir, body)


@pytest.mark.parametrize("where", ["mesh", "passthrough"])
def test_the_server_closing_first_leaves_the_client_direction_open(
    state_dir: Path, where: str
) -> None:
    """C-3, the other way from `roundtrip`: the server answers and sends FIN at once, then
    reads on; the client sees the end of the reply and can still send until its own EOF."""

    async def body(m: Mesh) -> None:
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(5)  # both tunnels are up: the FIN crosses them as END_STREAM
            writer.write(b"bye")
            writer.write_eof()
            received.set_result(await reader.read())
            writer.close()

        ip = m.server_ip if where == "mesh" else m.plain_ip
        server = await asyncio.start_server(handle, ip, 9103)
        reader, writer, code = await m.socks((ip, 9103))
        assert code == 0
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"  # FIN arrived
        await asyncio.sleep(0.05)
        writer.write(b"after your FIN")
        writer.write_eof()
        assert await asyncio.wait_for(received, 5) == b"after your FIN"
        writer.close()
        server.close()

    run(state_dir, body)


@pytest.mark.parametrize("where", ["mesh", "passthrough"])
def test_a_reset_on_one_side_is_a_reset_on_the_other_not_a_clean_end(
    state_dir: Path, where: str
) -> None:
    """C-4 regression: a relay ended the other side with `abort()`, which only discards buffers,
    so an RST from the server reached the client as a clean EOF: a truncated reply looked
    complete. Both ways, through HBONE and through passthrough, the RST must come out as one."""

    async def body(m: Mesh) -> None:
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if await reader.read(100) == b"reset me":
                writer.write(b"partial")
                await writer.drain()
                await asyncio.sleep(0.05)
                sockets.reset(writer.transport)
                return
            try:
                seen.put_nowait("eof" if await reader.read(100) == b"" else "data")
            except ConnectionResetError:
                seen.put_nowait("reset")
            writer.close()

        ip = m.server_ip if where == "mesh" else m.plain_ip
        server = await asyncio.start_server(handle, ip, 9100)
        reader, writer, code = await m.socks((ip, 9100))
        assert code == 0
        writer.write(b"reset me")
        assert await reader.read(100) == b"partial"
        with pytest.raises(ConnectionResetError):
            await reader.read(100)  # was b"": a clean end
        writer.close()

        reader, writer, code = await m.socks((ip, 9100))
        writer.write(b"hello")
        await writer.drain()
        await asyncio.sleep(0.05)
        sockets.reset(writer.transport)
        assert await asyncio.wait_for(seen.get(), 5) == "reset"  # was "eof"

        # Both connections are freed on both proxies and counted as closed, not as rejected.
        await until(lambda: not m.proxies["node1"].active and not m.proxies["node2"].active)
        if where == "mesh":
            assert m.metric("node2", "istio_tcp_connections_closed_total", **DST_LABELS) == 2
        assert not any(
            s.name.startswith("ambientmesh_ztunnel_rejections")
            for node in ("node1", "node2")
            for f in m.registries[node].collect()
            for s in f.samples
            if s.value
        )
        server.close()

    run(state_dir, body)


def test_unknown_source_and_no_config_fail_closed(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        _, writer, code = await m.socks(m.server, src_ip=f"127.{m.net}.1.99")
        writer.close()
        assert code == 2
        m.snapshots.clear()  # as before the first config arrives
        _, writer, code = await m.socks(m.server)
        writer.close()
        assert code == 2
        assert (
            m.metric(
                "node1",
                "ambientmesh_ztunnel_rejections_total",
                direction="outbound",
                reason="no_config",
            )
            == 1
        )

    run(state_dir, body)


def test_unreachable_pod_gets_503_and_an_unreachable_code(state_dir: Path) -> None:
    async def body(m: Mesh) -> None:
        _, writer, code = await m.socks((m.server_ip, 9999))
        writer.close()
        assert code == 4  # host unreachable ← HBONE 503
        assert (
            m.metric(
                "node2",
                "ambientmesh_ztunnel_rejections_total",
                direction="inbound",
                reason="upstream_unreachable",
            )
            == 1
        )

    run(state_dir, body)


def test_bytes_sent_before_the_tunnel_is_up_are_not_lost() -> None:
    """Regression: uvloop reads an accepted connection right after connection_made even when it
    paused; the holding protocol dropped those bytes, so a captured client's first request
    vanished (curl timed out with the tunnel up and 0 request bytes)."""

    class FakeTransport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.protocol: asyncio.BaseProtocol | None = None

        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...
        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            self.protocol = protocol

        def is_closing(self) -> bool:
            return False

    async def body() -> None:
        held = Held()
        transport = FakeTransport()
        held.connection_made(transport)
        held.data_received(b"GET / HTTP/1.1\r\n\r\n")  # arrives despite pause_reading()
        tunnel = Tunnel()
        held.handoff(tunnel)
        assert bytes(tunnel._pending) == b"GET / HTTP/1.1\r\n\r\n"

    asyncio.run(body())


def test_splice_keeps_client_bytes_until_the_server_side_connects() -> None:
    """Regression: plaintext inbound (15006) forwarded the request before the dialed server
    connection was attached, and the splice dropped it (the pod never answered)."""

    class Sink(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.data = b""
            self.eof = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.data += bytes(data)

        def can_write_eof(self) -> bool:
            return True

        def write_eof(self) -> None:
            self.eof = True

        def is_closing(self) -> bool:
            return False

    splice = Splice()
    splice.halves[0].data_received(b"GET / HTTP/1.0\r\n\r\n")
    splice.halves[0].eof_received()
    server = Sink()
    splice.halves[1].connection_made(server)
    assert server.data == b"GET / HTTP/1.0\r\n\r\n"
    assert server.eof


def test_a_connection_ends_when_the_certificate_it_was_authenticated_with_expires(
    state_dir: Path,
) -> None:
    """F-7, decided "close at not_after": TLS does not re-validate an established session, so
    the server cuts an HBONE connection when its peer's certificate expires, even though a renewed
    certificate exists meanwhile; new connections use the fresh one."""
    del state_dir

    async def main() -> None:
        async with mesh(ttl_s=6) as m:
            reader, writer, code = await m.socks(m.server)
            assert code == 0
            writer.write(b"early")
            assert await reader.readexactly(5) == b"EARLY"
            with pytest.raises(ConnectionResetError):  # cut: expiry comes within ~6 s
                await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert await roundtrip(m, b"fresh") == b"FRESH|EOF"  # a new connection works

    asyncio.run(main())


def test_an_overloaded_ztunnel_refuses_hbone_before_tls_and_new_streams_with_503(
    state_dir: Path,
) -> None:
    """L-1: inbound HBONE connections count against the global cap with proxied ones. Full, a
    new connection is reset before any TLS byte and a new stream gets 503; a handshake that
    fails, or a peer refused after it, gives its slot back; room again, traffic flows again."""

    async def body(m: Mesh) -> None:
        node2 = m.proxies["node2"]
        assert await roundtrip(m, b"one") == b"ONE|EOF"
        assert node2.hbone_in == 1  # node1's pooled connection
        listener = node2.hbone[m.server_ip].server.sockets[0].getsockname()

        # A handshake that fails (no client certificate) holds a slot only while it runs.
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(
                *listener, ssl=tls.client_context([]), server_hostname=""
            )
            writer.close()
        # So does one whose peer fails the checks after TLS (no ALPN h2: rejected as it is made).
        ca = m.controller.material
        leaf, key = pki.live_leaf(
            ca.signing_cert, ca.signing_key, "spiffe://cluster.local/ns/mesh/sa/client"
        )
        no_alpn = tls.client_context(
            m.managers["node1"].ca_pems(),
            chain_pem=[authority.pem(leaf), authority.pem(ca.signing_cert)],
            key_pem=authority.key_pem(key),
        )
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(*listener, ssl=no_alpn, server_hostname="")
            await asyncio.sleep(0.1)
            writer.close()
        await until(lambda: node2.hbone_in == 1)
        assert node2.hbone_in == 1
        assert (
            m.metric(
                "node2",
                "ambientmesh_ztunnel_rejections_total",
                direction="inbound",
                reason="peer_alpn_not_h2",
            )
            == 1
        )

        roomy = node2.settings
        node2.settings = dataclasses.replace(roomy, max_connections=1)
        _, writer, code = await m.socks(m.server)
        writer.close()
        assert code != 0  # the stream got 503
        assert await refused_before_tls(listener) == b"RST"
        assert (
            m.metric(
                "node2",
                "ambientmesh_ztunnel_rejections_total",
                direction="inbound",
                reason="overloaded",
            )
            == 2
        )

        node2.settings = roomy
        assert await roundtrip(m, b"two") == b"TWO|EOF"

    run(state_dir, body)
