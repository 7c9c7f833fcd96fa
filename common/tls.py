"""TLS contexts for the mesh: TLS 1.3 only, chain verified against the trust bundle in the
handshake, hostnames never checked (peers are identified by SPIFFE ID afterwards, see
ztunnel.identity.verify). No SNI is sent or used, as in Istio.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """ssl loads keys only from paths: a 0600 temp file, removed right after loading."""
    fd, path = tempfile.mkstemp(prefix="ambientmesh-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def load_identity(ctx: ssl.SSLContext, chain_pem: Sequence[str], key_pem: bytes) -> None:
    """(Re)load our certificate chain and key; later handshakes use the new pair."""
    with _private_file("".join(chain_pem).encode() + key_pem) as path:
        ctx.load_cert_chain(path)


def _base(purpose: ssl.Purpose, bundle_pem: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    if bundle_pem:
        ctx.load_verify_locations(cadata="".join(bundle_pem))
    return ctx


def server_context(
    chain_pem: Sequence[str],
    key_pem: bytes,
    *,
    bundle_pem: Sequence[str] = (),
    require_client_cert: bool = False,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.CLIENT_AUTH, bundle_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    load_identity(ctx, chain_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    bundle_pem: Sequence[str],
    *,
    chain_pem: Sequence[str] = (),
    key_pem: bytes = b"",
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.SERVER_AUTH, bundle_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if chain_pem:
        load_identity(ctx, chain_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
