"""15008 on the wire: who may open a tunnel (RELIABILITY I-1, I-7, I-8, H-1, H-3, H-4), checked
with an independent HTTP/2 client (Node's http2/nghttp2) and raw TLS/h2 clients."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from common import tls
from controller.ca import authority
from tests import pki
from tests.ci import in_ci
from tests.unit.ztunnel.harness import ECHO_PORT, Mesh, mesh
from ztunnel.identity.manager import WorkloadCertificate

NODE_CLIENT = Path(__file__).with_name("connect_client.js")


REJECTIONS = "ambientmesh_ztunnel_rejections_total"


def run(body: Callable[[Mesh], Awaitable[None]]) -> None:
    async def main() -> None:
        async with mesh() as m:
            await asyncio.wait_for(body(m), 30)

    asyncio.run(main())


def client_cert(m: Mesh) -> WorkloadCertificate:
    snap = m.snapshots["node1"]
    cert = m.managers["node1"].current(snap.workload(m.client_ip).identity)
    assert cert is not None
    return cert


def write_svid(tmp: Path, chain: list[str], key: bytes, bundle: list[str]) -> list[str]:
    files = {
        "cert.pem": "".join(chain).encode(),
        "key.pem": key,
        "ca.pem": "".join(bundle).encode(),
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return [str(tmp / n) for n in files]


async def node_connect(m: Mesh, tmp: Path, svid: list[str], authority_: str) -> str:
    args = [
        "node",
        str(NODE_CLIENT),
        m.server_ip,
        str(m.proxies["node2"].ports["hbone"]),
        authority_,
        *svid,
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode()


needs_node = pytest.mark.skipif(
    shutil.which("node") is None and not in_ci(),
    reason="needs node (scripts/bootstrap installs nodejs)",
)


@needs_node
def test_independent_http2_client_opens_a_tunnel_with_a_valid_svid(tmp_path: Path) -> None:
    async def body(m: Mesh) -> None:
        cert = client_cert(m)
        svid = write_svid(tmp_path, cert.chain_pem, cert.key_pem, cert.bundle_pem)
        out = await node_connect(m, tmp_path, svid, f"{m.server_ip}:{ECHO_PORT}")
        assert "STATUS 200" in out, out
        assert "BODY THIRD PARTY\n|EOF" in out, out

    run(body)


@needs_node
def test_independent_client_with_a_self_signed_look_alike_is_refused(tmp_path: Path) -> None:
    """I-1: a leaf with a correct-looking URI SAN from an unknown CA fails the handshake."""

    async def body(m: Mesh) -> None:
        rogue_root, rogue_key = pki.root(name="rogue")
        leaf, key = pki.leaf(
            rogue_root,
            rogue_key,
            uris=("spiffe://cluster.local/ns/mesh/sa/client",),
            not_before=pki.NOW.replace(year=2020),
            not_after=pki.NOW.replace(year=2099),
        )
        bundle = client_cert(m).bundle_pem
        svid = write_svid(tmp_path, [authority.pem(leaf)], authority.key_pem(key), bundle)
        out = await node_connect(m, tmp_path, svid, f"{m.server_ip}:{ECHO_PORT}")
        assert "STATUS" not in out  # TLS 1.3: the client may only see the connection close
        assert m.echo.peers == []

    run(body)


async def _tls(m: Mesh, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        m.server_ip, m.proxies["node2"].ports["hbone"], ssl=ctx, server_hostname=""
    )


def _client_ctx(
    m: Mesh, *, with_cert: bool = True, alpn: str = "h2", max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    cert = client_cert(m)
    ctx = tls.client_context(
        cert.bundle_pem,
        chain_pem=cert.chain_pem if with_cert else (),
        key_pem=cert.key_pem,
        alpn=[alpn],
    )
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    return ctx


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"with_cert": False}, "tls_peer_did_not_return_a_certificate"),  # I-7
        ({"max_version": ssl.TLSVersion.TLSv1_2}, "tls_unsupported_protocol"),  # I-8 TLS 1.2
        ({"alpn": "http/1.1"}, "peer_alpn_not_h2"),  # I-8 ALPN other than h2
    ],
)
def test_tls_without_the_mesh_terms_gets_nothing(kwargs: dict[str, object], reason: str) -> None:
    """The server refuses each, for its named reason, and no byte reaches the workload."""

    async def body(m: Mesh) -> None:
        def refused() -> float:
            return m.metric(
                "node2", "ambientmesh_ztunnel_rejections_total", direction="inbound", reason=reason
            )

        with contextlib.suppress(ssl.SSLError, ConnectionError):  # refused either side: both fine
            reader, writer = await _tls(m, _client_ctx(m, **kwargs))  # type: ignore[arg-type]
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b"", reason
        for _ in range(50):  # the server's side of a refused handshake may end after ours
            if refused():
                break
            await asyncio.sleep(0.02)
        assert refused() == 1, f"the server did not count {reason}"
        assert m.echo.peers == []

    run(body)


async def _h2_request(m: Mesh, headers: list[tuple[str, str]]) -> int:
    reader, writer = await _tls(m, _client_ctx(m))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, headers)
    writer.write(conn.data_to_send())
    status = 0
    while not status:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "connection closed without a response"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
        writer.write(conn.data_to_send())
    writer.close()
    return status


@pytest.mark.parametrize(
    ("authority_", "method", "status"),
    [
        ("{server}:{echo}", "CONNECT", 200),
        ("{server}:15000", "CONNECT", 400),  # H-4: ztunnel's own admin port
        ("{server}:15008", "CONNECT", 400),  # H-4: recursion into HBONE
        ("{plain}:{echo}", "CONNECT", 400),  # H-3: not the original destination
        ("{server}:{echo}", "GET", 400),  # H-1
    ],
)
def test_what_a_valid_peer_may_ask_for(authority_: str, method: str, status: int) -> None:
    async def body(m: Mesh) -> None:
        target = authority_.format(server=m.server_ip, plain=m.plain_ip, echo=ECHO_PORT)
        headers = [(":method", method), (":authority", target)]
        if method == "GET":
            headers += [(":scheme", "https"), (":path", "/")]
        assert await _h2_request(m, headers) == status

    run(body)


def test_rapid_reset_through_real_tls_is_cut_off_and_counted() -> None:
    """H-8 through sockets and TLS: a valid peer that opens and resets streams at full speed
    gets GOAWAY(ENHANCE_YOUR_CALM) past the limit (200 in 10 s), and the close is counted."""

    async def body(m: Mesh) -> None:
        reader, writer = await _tls(m, _client_ctx(m))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        headers = [(":method", "CONNECT"), (":authority", f"{m.server_ip}:{ECHO_PORT}")]
        for i in range(300):
            sid = 2 * i + 1
            conn.send_headers(sid, headers)
            conn.reset_stream(sid)
        writer.write(conn.data_to_send())
        code = None
        with contextlib.suppress(ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            while code is None and (data := await asyncio.wait_for(reader.read(65536), 5)):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        code = event.error_code
        writer.close()
        assert code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        for _ in range(50):
            if m.metric("node2", REJECTIONS, direction="inbound", reason="h2_rapid_reset"):
                break
            await asyncio.sleep(0.02)
        assert m.metric("node2", REJECTIONS, direction="inbound", reason="h2_rapid_reset") == 1

    run(body)
