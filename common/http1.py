"""HTTP/1.1 over asyncio with h11: a small server (CA, admin, metrics, readiness) and a one-shot
client (CA requests). Protocol work is h11's; this edge owns every timeout and size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import h11

log = logging.getLogger("common.http1")

# h11's own default for request line + headers (16 KiB → 431 past it).
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024  # our bodies are CSRs and small JSON documents
REQUEST_TIMEOUT_S = 10.0  # whole request, headers and body (slowloris bound)
IDLE_TIMEOUT_S = 30.0  # keep-alive idle
TLS_HANDSHAKE_TIMEOUT_S = 5.0  # asyncio's default is 60 s
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int] | None = None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class HttpError(Exception):
    """A request this side could not complete (connect, TLS, timeout, protocol)."""


def _headers(event: h11.Request | h11.Response) -> dict[str, str]:
    return {k.decode().lower(): v.decode(errors="replace") for k, v in event.headers}


async def _next_event(
    conn: h11.Connection, reader: asyncio.StreamReader, deadline: float
) -> h11.Event:
    loop = asyncio.get_running_loop()
    while True:
        event = conn.next_event()
        if event is h11.PAUSED:  # we never pipeline; a peer that does is broken
            raise h11.RemoteProtocolError("pipelined request")
        if event is not h11.NEED_DATA:
            return cast(h11.Event, event)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        data = await asyncio.wait_for(reader.read(READ_CHUNK), remaining)
        conn.receive_data(data)


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, peer: tuple[str, int] | None
) -> Request | None:
    loop = asyncio.get_running_loop()
    first = await _next_event(conn, reader, loop.time() + IDLE_TIMEOUT_S)
    if not isinstance(first, h11.Request):
        return None
    deadline = loop.time() + REQUEST_TIMEOUT_S
    body = bytearray()
    while not isinstance(event := await _next_event(conn, reader, deadline), h11.EndOfMessage):
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise h11.RemoteProtocolError("body too large", error_status_hint=413)
    return Request(first.method.decode(), first.target.decode(), _headers(first), bytes(body), peer)


def _send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    headers = [("content-type", response.content_type), ("content-length", str(len(response.body)))]
    headers += list(response.headers.items())
    writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)) or b"")
    writer.write(conn.send(h11.Data(data=response.body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")


async def _serve_connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    peer = writer.get_extra_info("peername")
    try:
        while True:
            try:
                request = await _read_request(conn, reader, peer)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    _send(
                        conn,
                        writer,
                        Response(exc.error_status_hint, b"bad request\n", "text/plain"),
                    )
                break
            if request is None:
                break
            _send(conn, writer, await handler(request))
            await writer.drain()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
    except (TimeoutError, ConnectionError, ssl.SSLError, h11.LocalProtocolError):
        pass  # the peer was slow, went away or broke TLS: nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    alpn: Mapping[str, ConnectionHandler] | None = None,
) -> asyncio.Server:
    """`reuse_port`: a second instance may bind beside this one (restart handover). `alpn`:
    connections that negotiated one of these protocols go to its handler instead (the
    controller's config stream is `h2` on the CA's port)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = ssl_object.selected_alpn_protocol() if ssl_object else None
        if alpn and protocol is not None and protocol in alpn:
            await alpn[protocol](reader, writer)
        else:
            await _serve_connection(handler, reader, writer)

    return await asyncio.start_server(
        on_connection,
        host,
        port,
        ssl=tls,
        reuse_address=True,
        reuse_port=reuse_port,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls else None,
    )


async def request(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    sock: socket.socket | None = None,
) -> tuple[int, bytes, ssl.SSLObject | None]:
    """One request on a fresh connection (or on `sock`, already connected, e.g. inside another
    netns); returns (status, body, TLS object for peer checks)."""
    where = {"sock": sock} if sock is not None else {"host": host, "port": port}
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                **where,
                ssl=tls,
                server_hostname="" if tls else None,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls else None,
            )
            try:
                return await _exchange(
                    reader,
                    writer,
                    host=host,
                    method=method,
                    target=target,
                    body=body,
                    headers=headers or {},
                )
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        raise HttpError(f"{host}:{port}: timed out after {timeout_s}s") from None
    except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
        raise HttpError(f"{host}:{port}: {exc}") from None


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    host: str,
    method: str,
    target: str,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, bytes, ssl.SSLObject | None]:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    all_headers = [("host", host), ("content-length", str(len(body))), ("connection", "close")]
    writer.write(
        conn.send(
            h11.Request(method=method, target=target, headers=all_headers + list(headers.items()))
        )
        or b""
    )
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT_S
    response = await _next_event(conn, reader, deadline)
    if not isinstance(response, h11.Response):
        raise h11.RemoteProtocolError("no response")
    data = bytearray()
    while not isinstance(event := await _next_event(conn, reader, deadline), h11.EndOfMessage):
        if isinstance(event, h11.Data):
            data += event.data
            if len(data) > MAX_BODY_BYTES:
                raise h11.RemoteProtocolError("response too large")
    return response.status_code, bytes(data), writer.get_extra_info("ssl_object")
