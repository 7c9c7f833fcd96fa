"""HTTP/1.1 through the waypoint, parsed by h11 (≥ 0.16: strict chunked framing, CVE-2025-43859)
on both sides: downstream as a server, upstream as a client.

Per request: check the headers (`exchange.check_headers`: 400), authorize (`Hooks.authorize`:
403 `RBAC: access denied`, the connection stays usable), then forward over an upstream
connection opened on the first allowed request and kept while both sides keep it alive. The
request body and the response flow at the same time, each bounded by the pipes' windows.
Limits: request line + headers 16 KiB (431, W-3); 300 s without progress either way (Envoy's
stream idle timeout) closes the connection; any protocol error from the client is answered with
h11's status hint (400, 431, 501) and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import h11

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
from ztunnel.waypoint.pipe import IdleTimer, Pipe, PipeReset

log = logging.getLogger("waypoint.http1")

MAX_HEADER_BYTES = 16 * 1024  # h11's own default; Envoy's is 60 KiB
IDLE_TIMEOUT_S = 300.0
MAX_DENIED_BODY = 64 * 1024  # a denied request's body is read and dropped up to this, else close


class _Closed(Exception):
    """The exchange cannot go on; the connection ends."""


def _text(pairs: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in pairs]


class Http1Session:
    def __init__(self, down: Pipe, flow: Flow, hooks: Hooks) -> None:
        self.down, self.flow, self.hooks = down, flow, hooks
        self.server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.up: Pipe | None = None
        self.client: h11.Connection | None = None

    async def _next(self, conn: h11.Connection, pipe: Pipe) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await pipe.read())
            self.idle.touch()

    def _expire(self) -> None:
        log.info("HTTP/1.1 connection from %s idle: closing", self.flow.src_ip)
        self.down.abort()
        if self.up is not None:
            self.up.abort()

    async def run(self, first: bytes) -> None:
        self.idle = IdleTimer(IDLE_TIMEOUT_S, self._expire)
        if first:
            self.server.receive_data(first)  # b"" would mean EOF to h11
        try:
            while await self._one():
                self.server.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._error(exc.error_status_hint, str(exc))
        except Refused as exc:
            await self._error(exc.status, str(exc))
        except (_Closed, PipeReset, TimeoutError, h11.LocalProtocolError) as exc:
            log.debug("HTTP/1.1 connection from %s ends: %r", self.flow.src_ip, exc)
        finally:
            self.idle.cancel()
            if self.up is not None:
                self.up.abort()
            self.down.end()

    async def _error(self, status: int, reason: str) -> None:
        log.info("HTTP/1.1 request from %s refused (%d): %s", self.flow.src_ip, status, reason)
        self.hooks.record(Exchange("", "http", status=status))
        if self.server.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._respond(status, reason.encode()[:200], close=True)

    async def _respond(self, status: int, body: bytes, *, close: bool = False) -> int:
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        phrase = HTTPStatus(status).phrase.encode()
        out = self.server.send(h11.Response(status_code=status, headers=headers, reason=phrase))
        out += self.server.send(h11.Data(data=body)) + self.server.send(h11.EndOfMessage())
        await self.down.write(out)
        return len(out)

    async def _one(self) -> bool:
        """Serve one request; False when the connection ends."""
        event = await self._next(self.server, self.down)
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed
        headers = _text(event.headers.raw_items())
        target = event.target.decode("latin-1")
        size = len(target) + sum(len(n) + len(v) + 4 for n, v in headers)
        if size > MAX_HEADER_BYTES:  # h11 bounds only what it has not parsed yet
            raise Refused(f"request headers of {size} bytes", 431)
        check_headers(headers)
        host = next((v for n, v in headers if n == "host"), "")
        if not host:  # h11 demands it of HTTP/1.1 only; policy and the upstream need it always
            raise Refused("missing Host header")
        request = policy_request(self.flow, event.method.decode(), target, host, headers)
        self.flow.requests += 1
        record = Exchange(request.method, protocol_of(headers))
        decision = self.hooks.authorize(request)
        if not decision.allowed:
            log.info(
                "%s %s from %s denied: %s",
                request.method,
                target,
                self.flow.src_ip,
                decision.reason,
            )
            record.status = DENIED_STATUS
            keep = await self._drop_body()
            record.response_bytes = await self._respond(DENIED_STATUS, DENIED_BODY, close=not keep)
            self.hooks.record(record)
            return keep and self.server.our_state is h11.DONE
        await self._forward(event, headers, record)
        self.hooks.record(record)
        return self.server.our_state is h11.DONE and self.server.their_state is h11.DONE

    async def _drop_body(self) -> bool:
        """Read a denied request's body to its end (small ones only); False: close instead."""
        dropped = 0
        while True:
            event = await self._next(self.server, self.down)
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False
            dropped += len(event.data)
            if dropped > MAX_DENIED_BODY:
                return False

    async def _upstream(self) -> tuple[Pipe, h11.Connection]:
        if self.up is None or self.client is None or self.client.our_state is not h11.IDLE:
            if self.up is not None:
                self.up.abort()
            self.up = await self.hooks.upstream()
            self.client = h11.Connection(h11.CLIENT)
        return self.up, self.client

    async def _forward(
        self, event: h11.Request, headers: list[tuple[str, str]], record: Exchange
    ) -> None:
        try:
            up, client = await self._upstream()
        except (OSError, PipeReset, TimeoutError) as exc:
            log.info("upstream for %s:%d failed: %s", self.flow.dst_ip, self.flow.dst_port, exc)
            record.status = 503
            record.response_bytes = await self._respond(503, b"upstream connect error")
            await self._drop_body()
            return
        forward = forwardable(headers)
        if any(n == "transfer-encoding" for n, _ in headers):
            forward.append(("transfer-encoding", "chunked"))  # the body's length is unknown
        out = client.send(h11.Request(method=event.method, target=event.target, headers=forward))
        first = self.server.next_event()
        sending: asyncio.Future[None] | None = None
        if isinstance(first, h11.EndOfMessage):  # no body (most requests): one write, no task
            out += client.send(h11.EndOfMessage(headers=first.headers))
        else:
            sending = asyncio.ensure_future(self._request_body(up, client, record, first))
        record.request_bytes += len(out)
        await up.write(out)
        try:
            await self._response(up, client, record)
        except (_Closed, PipeReset) as exc:
            failed = (
                sending.exception()
                if sending and sending.done() and not sending.cancelled()
                else None
            )
            if failed is not None:
                raise failed from None  # the client's error broke the exchange
            if sending is not None:
                sending.cancel()
            if self.server.our_state is not h11.SEND_RESPONSE:
                raise  # part of the response went out: only closing can tell the client
            log.info("upstream for %s:%d failed: %s", self.flow.dst_ip, self.flow.dst_port, exc)
            record.status = 502
            record.response_bytes = await self._respond(502, b"upstream reset", close=True)
            raise _Closed("upstream failed") from None
        if sending is not None:
            if not sending.done():
                sending.cancel()  # answered before the body ended (e.g. 413): body not read
                raise _Closed("response complete before the request")
            await sending  # its errors are the client's
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
        else:
            up.abort()
            self.up = self.client = None

    async def _request_body(
        self, up: Pipe, client: h11.Connection, record: Exchange, first: object
    ) -> None:
        try:
            await self._pump_body(up, client, record, first)
        except BaseException:
            up.abort()  # the response side stops waiting on a request that will not finish
            raise

    async def _pump_body(
        self, up: Pipe, client: h11.Connection, record: Exchange, event: object
    ) -> None:
        while True:
            if event is h11.NEED_DATA:
                event = await self._next(self.server, self.down)
            if isinstance(event, h11.Data):
                out = client.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                out = client.send(h11.EndOfMessage(headers=event.headers))
            else:
                raise _Closed("client went away mid-request")
            record.request_bytes += len(out)
            await up.write(out)
            if isinstance(event, h11.EndOfMessage):
                return
            event = h11.NEED_DATA

    async def _response(self, up: Pipe, client: h11.Connection, record: Exchange) -> None:
        """Relay the response, writing once per batch of parsed events (head and body of a
        small response go out in one HBONE DATA frame)."""
        out = bytearray()
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Closed(f"upstream: {exc}") from None
            if event is h11.NEED_DATA:
                if out:
                    await self._send_down(out, record)
                client.receive_data(await up.read())
                self.idle.touch()
                continue
            if isinstance(event, h11.InformationalResponse | h11.Response):
                if isinstance(event, h11.Response):
                    record.status = event.status_code
                headers = forwardable(_text(event.headers.raw_items()))
                kind = type(event)
                out += (
                    self.server.send(
                        kind(status_code=event.status_code, headers=headers, reason=event.reason)
                    )
                    or b""
                )
            elif isinstance(event, h11.Data):
                out += self.server.send(h11.Data(data=event.data)) or b""
            elif isinstance(event, h11.EndOfMessage):
                out += self.server.send(h11.EndOfMessage(headers=event.headers)) or b""
                await self._send_down(out, record)
                return
            else:
                raise _Closed("upstream closed mid-response")

    async def _send_down(self, out: bytearray, record: Exchange) -> None:
        record.response_bytes += len(out)
        await self.down.write(bytes(out))
        out.clear()
