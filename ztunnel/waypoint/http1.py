"""HTTP/1.1 through the waypoint: requests read from the client and responses from the
upstream by `h1wire` (llhttp, strict), heads and framing written by `h1wire`.

Per request: check the headers (`exchange.check_headers`: 400), authorize (`Hooks.authorize`:
403 `RBAC: access denied`, the connection stays usable), then forward over an upstream
connection opened on the first allowed request and kept while both sides keep it alive. The
request body and the response flow at the same time, each bounded by the pipes' windows.
Hop-by-hop headers are dropped, and each side is framed anew as h11 framed it: a body of
unknown length goes chunked to an HTTP/1.1 client and close-delimited to an HTTP/1.0 one, whose
connection then closes (no 1.0 keep-alive).
WebSocket, as Istio's waypoint (Envoy's `upgrade_configs: websocket`): the handshake request is
authorized like any other and forwarded with its Upgrade; on the server's 101 the connection
becomes a byte relay both ways, with half-close, until both ends finish or policy changes to deny
it (RELIABILITY F-10); any other answer ends the connection after it. Other Upgrades (h2c) are
dropped: the exchange stays HTTP/1.1.
Limits: request line + headers 16 KiB (431, W-3); 300 s without progress either way (Envoy's
stream idle timeout) closes the connection; any protocol error from the client is answered with
its status (400, 431, 501, 505) and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import NoReturn

from ztunnel.waypoint import h1wire
from ztunnel.waypoint.authz import Request
from ztunnel.waypoint.exchange import (
    DENIED_BODY,
    DENIED_STATUS,
    Exchange,
    Flow,
    Hooks,
    Refused,
    check_headers,
    forwardable,
    policy_request,
    protocol_of,
)
from ztunnel.waypoint.h1wire import CLOSED, End, Head, ProtocolError
from ztunnel.waypoint.pipe import IdleTimer, Pipe, PipeReset, relay

log = logging.getLogger("waypoint.http1")

MAX_HEADER_BYTES = 16 * 1024  # h11's default, which this session used first; Envoy's is 60 KiB
IDLE_TIMEOUT_S = 300.0
MAX_DENIED_BODY = 64 * 1024  # a denied request's body is read and dropped up to this, else close
SWITCH = [("connection", "upgrade"), ("upgrade", "websocket")]


def host_of(head: Head) -> str:
    return next((v for n, v in head.headers if n == "host"), "")


class _Closed(Exception):
    """The exchange cannot go on; the connection ends."""


class _Upstream:
    """One upstream connection and the reader of its responses."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.responses = h1wire.ResponseReader(MAX_HEADER_BYTES)


class Http1Session:
    def __init__(self, down: Pipe, flow: Flow, hooks: Hooks) -> None:
        self.down, self.flow, self.hooks = down, flow, hooks
        self.requests = h1wire.RequestReader(MAX_HEADER_BYTES)
        self.up: _Upstream | None = None
        self.request: Head | None = None  # the one being served
        self.authorized: Request | None = None  # what policy judged of it
        self.answered = False  # part of its response went out
        self._down_framing = "length"  # of the response being relayed: length|chunked|close|none

    async def _next(
        self, reader: h1wire.RequestReader | h1wire.ResponseReader, pipe: Pipe
    ) -> h1wire.Event:
        while (event := reader.next_event()) is None:
            reader.feed(await pipe.read())
            self.idle.touch()
        return event

    def _expire(self) -> None:
        log.info("HTTP/1.1 connection from %s idle: closing", self.flow.src_ip)
        self.down.abort()
        if self.up is not None:
            self.up.pipe.abort()

    async def run(self, first: bytes) -> None:
        self.idle = IdleTimer(IDLE_TIMEOUT_S, self._expire)
        try:
            if first:
                self.requests.feed(first)  # b"" would mean EOF
            while await self._one():
                self.request, self.answered = None, False
        except (ProtocolError, Refused) as exc:
            await self._error(exc.status, str(exc))
        except (_Closed, PipeReset, TimeoutError) as exc:
            log.debug("HTTP/1.1 connection from %s ends: %r", self.flow.src_ip, exc)
        finally:
            self.idle.cancel()
            if self.up is not None:
                self.up.pipe.abort()
            self.down.end()

    async def _error(self, status: int, reason: str) -> None:
        log.info("HTTP/1.1 request from %s refused (%d): %s", self.flow.src_ip, status, reason)
        self.hooks.record(Exchange("", "http", status=status))
        if not self.answered:
            await self._respond(status, reason.encode()[:200], close=True)

    async def _respond(self, status: int, body: bytes, *, close: bool = False) -> int:
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        if close or not self._keep_alive():
            headers.append(("connection", "close"))
        out = h1wire.response_head(status, HTTPStatus(status).phrase.encode(), headers)
        if self.request is None or self.request.method != "HEAD":
            out += body
        self.answered = True
        await self.down.write(out)
        return len(out)

    def _keep_alive(self) -> bool:
        """Whether the client's connection may carry another request (h11's rule: HTTP/1.1
        without `Connection: close`); never after a WebSocket handshake, answered or not."""
        request = self.request
        return (
            request is not None
            and request.keep_alive
            and request.version == "1.1"
            and not request.websocket
        )

    async def _one(self) -> bool:
        """Serve one request; False when the connection ends."""
        event = await self._next(self.requests, self.down)
        if event is CLOSED:
            return False
        assert isinstance(event, Head)
        self.request = event
        headers = event.headers
        check_headers(headers)
        host = host_of(event)
        if not host:  # policy and the upstream need it, also from HTTP/1.0 clients
            raise Refused("missing Host header")
        request = policy_request(self.flow, event.method, event.target, host, headers)
        self.authorized = request
        self.flow.requests += 1
        record = Exchange(request.method, protocol_of(headers))
        decision = self.hooks.authorize(request)
        if not decision.allowed:
            log.info(
                "%s %s from %s denied: %s",
                request.method,
                event.target,
                self.flow.src_ip,
                decision.reason,
            )
            record.status = DENIED_STATUS
            keep = await self._drop_body()
            record.response_bytes = await self._respond(DENIED_STATUS, DENIED_BODY, close=not keep)
            self.hooks.record(record)
            return keep and self._keep_alive()
        try:
            return await self._forward(event, request, record)
        finally:
            if record.status:  # also a 502, or a WebSocket that was cut
                self.hooks.record(record)

    async def _drop_body(self) -> bool:
        """Read a denied request's body to its end (small ones only); False: close instead."""
        dropped = 0
        while True:
            event = await self._next(self.requests, self.down)
            if isinstance(event, End):
                return True
            if not isinstance(event, bytes):
                return False
            dropped += len(event)
            if dropped > MAX_DENIED_BODY:
                return False

    async def _upstream(self) -> _Upstream:
        if self.up is None:
            self.up = _Upstream(await self.hooks.upstream())
        return self.up

    def _drop_upstream(self) -> None:
        if self.up is not None:
            self.up.pipe.abort()
            self.up = None

    async def _forward(self, head: Head, request: Request, record: Exchange) -> bool:
        """Relay one allowed request and its response; whether the client's connection goes on."""
        try:
            up = await self._upstream()
        except (OSError, PipeReset, TimeoutError) as exc:
            log.info("upstream for %s:%d failed: %s", self.flow.dst_ip, self.flow.dst_port, exc)
            record.status = 503
            keep = await self._drop_body()
            record.response_bytes = await self._respond(
                503, b"upstream connect error", close=not keep
            )
            return keep and self._keep_alive()
        forward = forwardable(head.headers)
        if request.host != host_of(head):  # an absolute-form target's authority wins
            forward = [(n, request.host if n == "host" else v) for n, v in forward]
        if head.chunked:
            forward.append(("transfer-encoding", "chunked"))
        if head.websocket:
            forward += SWITCH
        out = h1wire.request_head(head.method, request.target, forward)
        up.responses.expect(head.method, websocket=head.websocket)
        first = self.requests.next_event()
        sending: asyncio.Future[None] | None = None
        if isinstance(first, End):  # no body (most requests): one write, no task
            if head.chunked:
                out += h1wire.last_chunk(first.trailers)
        else:
            sending = asyncio.ensure_future(
                self._request_body(up.pipe, head.chunked, record, first)
            )
        record.request_bytes += len(out)
        await up.pipe.write(out)
        try:
            reusable = await self._response(up, record)
        except (_Closed, PipeReset, ProtocolError) as exc:
            await self._failed(exc, sending, record)
        if sending is not None:
            if not sending.done():
                sending.cancel()  # answered before the body ended (e.g. 413): body not read
                raise _Closed("response complete before the request")
            await sending  # its errors are the client's
        if record.status == 101:
            await self._tunnel(up, record)
            return False
        if not reusable:
            self._drop_upstream()
        return self._keep_alive() and self._down_framing != "close"

    async def _failed(
        self, exc: Exception, sending: asyncio.Future[None] | None, record: Exchange
    ) -> NoReturn:
        """The exchange broke while its response was awaited or relayed."""
        failed = (
            sending.exception() if sending and sending.done() and not sending.cancelled() else None
        )
        if failed is not None:
            raise failed from None  # the client's error broke the exchange
        if sending is not None:
            sending.cancel()
        self._drop_upstream()
        if self.answered:
            raise _Closed("upstream failed mid-response") from None
        log.info("upstream for %s:%d failed: %s", self.flow.dst_ip, self.flow.dst_port, exc)
        record.status = 502
        record.response_bytes = await self._respond(502, b"upstream reset", close=True)
        raise _Closed("upstream failed") from None

    async def _tunnel(self, up: _Upstream, record: Exchange) -> None:
        """After a 101: the WebSocket's bytes both ways, as they are (Envoy too proxies them
        as TCP), until both sides end or policy changes to deny it (F-10); the upstream
        connection goes with it."""
        assert self.authorized is not None
        closing: list[str] = []

        def abort(reason: str) -> None:
            closing.append(reason)
            self.down.abort()
            up.pipe.abort()

        with self.hooks.hold(self.authorized, abort) as verdict:
            if not verdict.allowed:  # policy changed while the handshake was under way
                raise _Closed(f"policy changed: {verdict.reason}")
            try:
                if self.requests.tail:
                    await up.pipe.write(self.requests.tail)
                if up.responses.tail:
                    await self.down.write(up.responses.tail)
                sent, received = await relay(self.down, up.pipe, progress=self.idle.touch)
            except (PipeReset, OSError) as exc:
                raise _Closed(closing[0] if closing else f"WebSocket ended: {exc!r}") from None
        self.up = None  # both ends finished: nothing left to abort
        record.request_bytes += len(self.requests.tail) + sent
        record.response_bytes += len(up.responses.tail) + received

    async def _request_body(
        self, up: Pipe, chunked: bool, record: Exchange, first: h1wire.Event | None
    ) -> None:
        try:
            await self._pump_body(up, chunked, record, first)
        except BaseException:
            up.abort()  # the response side stops waiting on a request that will not finish
            raise

    async def _pump_body(
        self, up: Pipe, chunked: bool, record: Exchange, event: h1wire.Event | None
    ) -> None:
        while True:
            if event is None:
                event = await self._next(self.requests, self.down)
            if isinstance(event, bytes):
                out = h1wire.chunk(event) if chunked else event
            elif isinstance(event, End):
                out = h1wire.last_chunk(event.trailers) if chunked else b""
            else:
                raise _Closed("client went away mid-request")
            record.request_bytes += len(out)
            if out:
                await up.write(out)
            if isinstance(event, End):
                return
            event = None

    async def _response(self, up: _Upstream, record: Exchange) -> bool:
        """Relay the response, writing once per batch of parsed events (head and body of a
        small response go out in one HBONE DATA frame); whether the upstream is reusable."""
        out = bytearray()
        reusable = False
        while True:
            event = up.responses.next_event()
            if event is None:
                if out:
                    await self._send_down(out, record)
                up.responses.feed(await up.pipe.read())
                self.idle.touch()
            elif isinstance(event, Head):
                if event.status == 101:
                    if not up.responses.spent:  # the reader switches after WebSocket requests
                        raise _Closed("upstream switched protocols unasked")
                    record.status = 101
                    self.answered = True
                    headers = forwardable(event.headers) + SWITCH
                    out += h1wire.response_head(101, event.reason, headers)
                    await self._send_down(out, record)
                    return False
                if event.status >= 200:
                    record.status = event.status
                    reusable = event.keep_alive and not event.until_close
                out += self._response_head(event)
            elif isinstance(event, bytes):
                out += h1wire.chunk(event) if self._down_framing == "chunked" else event
            elif isinstance(event, End):
                if not record.status:
                    continue  # the end of a 1xx: the final response follows
                if self._down_framing == "chunked":
                    out += h1wire.last_chunk(event.trailers)
                await self._send_down(out, record)
                return reusable and not up.responses.spent
            else:
                raise _Closed("upstream closed before responding")

    def _response_head(self, head: Head) -> bytes:
        """The head for the client, framed as h11 framed it (HEAD as if GET); none for a 1xx to
        an HTTP/1.0 client (RFC 9110 §15.2: it would not understand it)."""
        request = self.request
        assert request is not None
        headers = forwardable(head.headers)
        if head.status < 200 and request.version == "1.0":
            return b""
        if head.status >= 200:
            framing = "length"
            if head.length is None and head.status not in (204, 304):
                if request.version == "1.1":
                    headers.append(("transfer-encoding", "chunked"))
                    framing = "chunked"
                elif request.method != "HEAD":
                    framing = "close"
            if not self._keep_alive() or framing == "close":
                headers.append(("connection", "close"))
            bodiless = request.method == "HEAD" or head.status in (204, 304)
            self._down_framing = "none" if bodiless else framing
            self.answered = True  # after a 1xx, a 502 can still replace the final response
        return h1wire.response_head(head.status, head.reason, headers)

    async def _send_down(self, out: bytearray, record: Exchange) -> None:
        record.response_bytes += len(out)
        await self.down.write(bytes(out))
        out.clear()
