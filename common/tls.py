"""TLS contexts for the mesh: TLS 1.3 only, chain verified against the trust bundle in the
handshake, hostnames never checked (peers are identified by SPIFFE ID afterwards, see
ztunnel.identity.verify). No SNI is sent or used, as in Istio.

Session resumption, for HBONE pool dials only (a resumed mutual handshake costs both ends about
half a full one: ~0.8 against ~1.7 ms, scripts/handshake.py): the server issues one ticket per
handshake (`server_context(tickets=True)`); a `ResumingContext` offers a peer's last session
again. A resumed handshake verifies no chain: it trusts what the first one verified. So a
session is offered only while everything that handshake relied on still holds: our certificate
and trust bundle (a context, with its sessions, belongs to one of each), the peer's certificate
(until a minute before its not_after; the SPIFFE checks run on every connection, resumed or
not), and the server's ticket lifetime. A dial that fails forgets the peer's session.
OpenSSL makes a context's ticket keys with the context and never rotates them, and Python has
no call to: a listener that issues tickets replaces its context every `TICKET_KEY_LIFETIME_S`
(its tickets then no longer resume: the next dial is a full handshake).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# rustls's Ticketer switches to a new key every 6 h (accepting the previous one for 6 h more);
# OpenSSL's tickets say 2 h (its default session timeout), which its server enforces too.
TICKET_KEY_LIFETIME_S = 6 * 3600.0


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


class SessionCache:
    """The resumable sessions of one client context, by peer (see the module doc)."""

    # rustls's default client session cache holds 256. Ours costs ~34 KiB a peer (the last
    # connection's SSLObject; ~18 KiB once only its session is kept): ~9 MB at most.
    MAX_PEERS = 256
    PEER_MARGIN_S = 60.0  # a session is not offered in its peer certificate's last minute

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # The last connection's SSLObject: a TLS 1.3 ticket arrives after the handshake, so
        # its session is read when next offered.
        self._by_peer: OrderedDict[str, tuple[ssl.SSLObject, float]] = OrderedDict()

    def offer(self, peer: str) -> ssl.SSLSession | None:
        entry = self._by_peer.get(peer)
        if entry is None:
            return None
        ssl_object, peer_not_after = entry
        session = ssl_object.session
        now = self._clock()
        if (
            session is None
            or not session.has_ticket
            or now >= session.time + session.timeout
            or now >= peer_not_after - self.PEER_MARGIN_S
        ):
            del self._by_peer[peer]
            return None
        return session

    def remember(self, peer: str, ssl_object: ssl.SSLObject, peer_not_after: float) -> None:
        self._by_peer[peer] = (ssl_object, peer_not_after)
        self._by_peer.move_to_end(peer)
        while len(self._by_peer) > self.MAX_PEERS:
            self._by_peer.popitem(last=False)

    def forget(self, peer: str) -> None:
        self._by_peer.pop(peer, None)


class ResumingContext(ssl.SSLContext):
    """A client context that resumes its sessions. The dial's `server_hostname` names the peer
    in `sessions` and goes no further: OpenSSL gets none, so no SNI is sent."""

    sessions: SessionCache

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if isinstance(server_hostname, str) and session is None:
            session = self.sessions.offer(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, None, session)


def _base(
    purpose: ssl.Purpose, bundle_pem: Sequence[str], kind: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    ctx = kind(
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
    tickets: bool = False,
) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.CLIENT_AUTH, bundle_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    if tickets:  # stateless, one per handshake (OpenSSL sends two): a client keeps the last
        ctx.options &= ~ssl.OP_NO_TICKET
        ctx.num_tickets = 1
    else:  # with OP_NO_TICKET alone, TLS 1.3 still resumes from OpenSSL's server-side cache
        ctx.num_tickets = 0
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
    resume: bool = False,
) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.SERVER_AUTH, bundle_pem, ResumingContext if resume else ssl.SSLContext)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if isinstance(ctx, ResumingContext):
        ctx.options &= ~ssl.OP_NO_TICKET
        ctx.sessions = SessionCache()
    if chain_pem:
        load_identity(ctx, chain_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
