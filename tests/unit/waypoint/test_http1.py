"""HTTP/1.1 through the waypoint's session, over in-memory pipes, with a real h11 backend: what
is forwarded, what is refused before reaching the backend, and that the connection survives a
denial."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import h11
import pytest

from ztunnel.state.policy import Decision
from ztunnel.waypoint import http1
from ztunnel.waypoint.authz import Request
from ztunnel.waypoint.exchange import Exchange, Flow
from ztunnel.waypoint.http1 import Http1Session
from ztunnel.waypoint.pipe import PipeReset


class MemoryPipe:
    """One end of an in-memory byte pipe."""

    def __init__(self, inbox: asyncio.Queue[bytes | None], outbox: asyncio.Queue[bytes | None]):
        self.inbox, self.outbox = inbox, outbox
        self.ended = self.aborted = False

    async def read(self) -> bytes:
        if self.aborted:
            raise PipeReset("aborted")
        data = await self.inbox.get()
        if self.aborted:
            raise PipeReset("aborted")
        return data or b""

    async def write(self, data: bytes) -> None:
        if self.aborted:
            raise PipeReset("aborted")
        if data:
            await self.outbox.put(data)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.outbox.put_nowait(None)

    def abort(self) -> None:
        self.aborted = True
        self.end()
        self.inbox.put_nowait(None)  # wakes our own reader, as a reset does


def pipe_pair() -> tuple[MemoryPipe, MemoryPipe]:
    a: asyncio.Queue[bytes | None] = asyncio.Queue()
    b: asyncio.Queue[bytes | None] = asyncio.Queue()
    return MemoryPipe(a, b), MemoryPipe(b, a)


async def backend(pipe: MemoryPipe, seen: list[tuple[str, str, bytes]]) -> None:
    """An HTTP/1.1 server answering `200 <method> <path>` (HEAD: no body), recording requests."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await pipe.read())
            continue
        if isinstance(event, h11.Request):
            method, target, body = event.method.decode(), event.target.decode(), b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            seen.append((method, target, body))
            text = f"{method} {target} {len(body)}".encode()
            headers = [("content-length", str(len(text)))]
            out = conn.send(h11.Response(status_code=200, headers=headers))
            if method != "HEAD":
                out += conn.send(h11.Data(data=text))
            await pipe.write(out + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()
        else:
            return


class Hooks:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.records: list[Exchange] = []
        self.dials = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.held: list[Callable[[str], None]] = []  # WebSockets' aborts (F-10)

    def authorize(self, request: Request) -> Decision:
        allowed = request.path.startswith("/api/") and request.method in ("GET", "POST", "HEAD")
        return Decision(allowed, "", "allowed" if allowed else "denied_by_policy")

    async def upstream(self) -> MemoryPipe:
        self.dials += 1
        ours, theirs = pipe_pair()
        self.tasks.append(asyncio.create_task(backend(theirs, self.seen)))
        return ours

    def record(self, exchange: Exchange) -> None:
        self.records.append(exchange)

    def hold(
        self, request: Request, abort: Callable[[str], None]
    ) -> contextlib.AbstractContextManager[Decision]:
        self.held.append(abort)
        return contextlib.nullcontext(self.authorize(request))


def run(
    raw: bytes,
    check: Callable[[bytes, Hooks], Awaitable[None] | None],
    hooks: Hooks | None = None,
) -> None:
    """`raw` from a client that then half-closes, through a session; `check` gets all it got."""

    async def main(hooks: Hooks) -> None:
        client, proxy_end = pipe_pair()
        session = Http1Session(proxy_end, Flow("10.0.0.1", "td/ns/a/sa/b", "10.96.0.5", 80), hooks)
        task = asyncio.create_task(session.run(b""))
        await client.write(raw)
        client.end()
        await asyncio.wait_for(task, 5)
        out = b""
        while (chunk := await client.read()) != b"":
            out += chunk
        for t in hooks.tasks:
            t.cancel()
        result = check(out, hooks)
        if result is not None:
            await result

    asyncio.run(main(hooks or Hooks()))


def statuses(out: bytes) -> list[int]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(out)
    found: list[int] = []
    while True:
        try:
            event: Any = conn.next_event()
        except h11.RemoteProtocolError:
            return found
        if isinstance(event, h11.Response):
            found.append(event.status_code)
        elif isinstance(event, h11.EndOfMessage):
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return found
            conn.start_next_cycle()
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return found


GET = b"GET /api/v1 HTTP/1.1\r\nHost: web\r\n\r\n"


def test_an_allowed_request_is_forwarded_and_answered() -> None:
    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [200]
        assert b"GET /api/v1 0" in out
        assert hooks.seen == [("GET", "/api/v1", b"")]
        assert [(r.method, r.status, r.protocol) for r in hooks.records] == [("GET", 200, "http")]

    run(GET, check)


def test_a_denied_request_gets_403_and_the_connection_goes_on() -> None:
    denied = b"DELETE /api/v1 HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc"

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [403, 200]
        assert b"RBAC: access denied" in out
        assert hooks.seen == [("GET", "/api/v1", b"")], "the denied one never reached it"

    run(denied + GET, check)


def test_keep_alive_requests_share_one_upstream_connection() -> None:
    post = b"POST /api/x HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
    post += b"3\r\nabc\r\n0\r\n\r\n"

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [200, 200, 200]
        assert hooks.seen == [
            ("GET", "/api/v1", b""),
            ("POST", "/api/x", b"abc"),
            ("HEAD", "/api/v1", b""),
        ]
        assert hooks.dials == 1

    run(GET + post + GET.replace(b"GET", b"HEAD", 1), check)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # W-1 request smuggling
        (b"GET /api/x HTTP/1.1\r\nHost: w\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
        (b"POST /api/x HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (
            b"POST /api/x HTTP/1.1\r\nHost: w\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: w\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        # W-2 Host
        (b"GET /api/x HTTP/1.1\r\n\r\n", 400),
        (b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /api/x HTTP/1.0\r\n\r\n", 400),
        # W-3 header size
        (b"GET /api/x HTTP/1.1\r\nHost: w\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
        # W-4 underscores and paths
        (b"GET /api/x HTTP/1.1\r\nHost: w\r\nX_User: admin\r\n\r\n", 400),
        (b"GET api/x HTTP/1.1\r\nHost: w\r\n\r\n", 400),
        (b"GET /api/..;/admin HTTP/1.1\r\nHost: w\r\n\r\n", 400),
        (b"GET /api/%2e%2e%2fadmin HTTP/1.1\r\nHost: w\r\n\r\n", 400),
        (b"GET /api/%00 HTTP/1.1\r\nHost: w\r\n\r\n", 400),
        (b"GET /api/%c0%ae%c0%ae/admin HTTP/1.1\r\nHost: w\r\n\r\n", 400),
        (b"get /api/x HTTP/1.1\r\nHost: w\r\n\r\n", 501),  # llhttp: not a method
    ],
)
def test_bad_requests_are_refused_and_never_reach_the_backend(raw: bytes, status: int) -> None:
    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [status]
        assert hooks.seen == []
        assert hooks.dials == 0

    run(raw + GET, check)


@pytest.mark.parametrize(
    ("target", "status", "received"),
    [
        (b"/api/%2e%2e/admin", 403, None),  # judged as /admin: denied, never forwarded
        (b"/api/.%2e/admin", 403, None),
        (b"/api/x/%2e%2e/y", 200, "/api/y"),
        (b"/api/x\\..\\y", 200, "/api/y"),
        (b"/api/%41b?q=/../admin", 200, "/api/Ab?q=/../admin"),
        (b"http://evil/api/../api/x", 200, "/api/x"),  # absolute form: origin form upstream
    ],
)
def test_path_bypass_the_backend_receives_the_path_policy_judged(
    target: bytes, status: int, received: str | None
) -> None:
    """W-6: policy allows /api/* only; the backend gets exactly the normalized path."""

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out)[0] == status
        assert [t for _, t, _ in hooks.seen][:1] == ([received] if received else [])

    run(b"GET " + target + b" HTTP/1.1\r\nHost: w\r\n\r\n", check)


def test_a_malformed_chunk_mid_body_gets_400_and_the_backend_no_request() -> None:
    """A bare LF after the chunk size shows only once the body flows: the upstream exchange
    has begun, so it is reset; the backend never gets a complete request."""
    raw = (
        b"POST /api/x HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
    )

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [400]
        assert hooks.seen == []

    run(raw + GET, check)


def test_path_is_normalized_before_policy() -> None:
    """`/api/../admin` is `/admin` to policy: denied, though it starts with `/api/`."""

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [403]

    run(b"GET /api/../admin HTTP/1.1\r\nHost: w\r\n\r\n", check)


def test_a_backend_that_cannot_be_reached_gets_503() -> None:
    async def failing() -> MemoryPipe:
        raise OSError("connection refused")

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [503]

    hooks = Hooks()
    hooks.upstream = failing  # type: ignore[method-assign]
    run(GET, check, hooks)


def raw_backend(
    response: bytes, seen: list[bytes]
) -> Callable[[], Coroutine[Any, Any, MemoryPipe]]:
    """An upstream that records the first bytes it gets and answers them with `response`,
    then closes."""

    async def serve(pipe: MemoryPipe) -> None:
        seen.append(await pipe.read())
        await pipe.write(response)
        pipe.end()

    tasks = []

    async def upstream() -> MemoryPipe:
        ours, theirs = pipe_pair()
        tasks.append(asyncio.create_task(serve(theirs)))
        return ours

    return upstream


@pytest.mark.parametrize(
    ("version", "framing"),
    [(b"1.1", b"transfer-encoding: chunked\r\n"), (b"1.0", b"connection: close\r\n")],
)
def test_a_body_ended_by_close_goes_chunked_to_http11_and_close_delimited_to_http10(
    version: bytes, framing: bytes
) -> None:
    """As h11 framed it: the backend's close cannot end the client's response on a kept-alive
    connection, so an HTTP/1.1 client gets chunks; an HTTP/1.0 one gets the close."""
    hooks = Hooks()
    hooks.upstream = raw_backend(b"HTTP/1.1 200 OK\r\n\r\nhello", [])  # type: ignore[method-assign]

    def check(out: bytes, hooks: Hooks) -> None:
        head, _, body = out.partition(b"\r\n\r\n")
        assert framing in head + b"\r\n"
        assert body == (b"5\r\nhello\r\n0\r\n\r\n" if version == b"1.1" else b"hello")

    run(b"GET /api/x HTTP/" + version + b"\r\nHost: w\r\n\r\n", check, hooks)


@pytest.mark.parametrize(("version", "forwarded"), [(b"1.1", True), (b"1.0", False)])
def test_an_informational_response_reaches_http11_clients_only(
    version: bytes, forwarded: bool
) -> None:
    hooks = Hooks()
    hooks.upstream = raw_backend(  # type: ignore[method-assign]
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", []
    )

    def check(out: bytes, hooks: Hooks) -> None:
        assert (b"100 Continue" in out) is forwarded
        assert out.count(b"HTTP/1.1 ") == (2 if forwarded else 1) and out.endswith(b"\r\n\r\nok")

    run(b"GET /api/x HTTP/" + version + b"\r\nHost: w\r\n\r\n", check, hooks)


def test_hop_by_hop_headers_and_an_h2c_upgrade_are_not_forwarded() -> None:
    """curl --http2 on http:// asks to upgrade to h2c: the request is served as HTTP/1.1."""
    seen: list[bytes] = []
    hooks = Hooks()
    hooks.upstream = raw_backend(  # type: ignore[method-assign]
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok", seen
    )
    raw = (
        b"GET /api/x HTTP/1.1\r\nHost: w\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nX-A: 1\r\n\r\n"
    )

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [200]
        assert b"keep-alive" not in out.lower()
        assert seen == [b"GET /api/x HTTP/1.1\r\nhost: w\r\nx-a: 1\r\n\r\n"]

    run(raw, check, hooks)


WS_HANDSHAKE = (
    b"GET /api/chat HTTP/1.1\r\nHost: w\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
WS_ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def websocket_backend(answer: bytes, seen: list[bytes]) -> Callable[[], Any]:
    """An upstream that reads a head, answers `answer` and a greeting in one write, then echoes
    what follows upper-cased until the client's end, and ends too."""

    async def serve(pipe: MemoryPipe) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await pipe.read()
        head, _, rest = data.partition(b"\r\n\r\n")
        seen.append(head)
        await pipe.write(answer + b"hi!")
        while rest or (rest := await pipe.read()):
            await pipe.write(rest.upper())
            rest = b""
        pipe.end()

    async def upstream() -> MemoryPipe:
        ours, theirs = pipe_pair()
        asyncio.get_running_loop().create_task(serve(theirs))
        return ours

    return upstream


def test_a_websocket_handshake_becomes_a_byte_relay_both_ways() -> None:
    """Istio's waypoint proxies WebSocket: the handshake is authorized and forwarded with its
    Upgrade, and after the 101 bytes flow as they are, including those that came with the
    handshake (the client's `early`, the server's greeting), until both sides end."""
    seen: list[bytes] = []
    hooks = Hooks()
    hooks.upstream = websocket_backend(WS_ACCEPT, seen)  # type: ignore[method-assign]

    def check(out: bytes, hooks: Hooks) -> None:
        head, _, rest = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"connection: upgrade" in head and b"upgrade: websocket" in head
        assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        assert rest == b"hi!EARLY GET /API/X HTTP/1.1\r\n\r\n"  # not parsed as a request
        assert b"\r\nupgrade: websocket" in seen[0] and b"connection: upgrade" in seen[0]
        assert b"keep-alive" not in seen[0]
        [record] = hooks.records
        assert (record.status, record.response_bytes) == (101, len(out))

    run(WS_HANDSHAKE + b"early GET /api/x HTTP/1.1\r\n\r\n", check, hooks)


def test_a_websocket_is_cut_when_policy_changes_to_deny_it() -> None:
    """F-10: the session holds its WebSocket with the proxy, which aborts it on a denying
    change; both sides are reset and the exchange is recorded."""

    async def main() -> None:
        hooks = Hooks()
        hooks.upstream = websocket_backend(WS_ACCEPT, [])  # type: ignore[method-assign]
        client, proxy_end = pipe_pair()
        session = Http1Session(proxy_end, Flow("10.0.0.1", "td/ns/a/sa/b", "10.96.0.5", 80), hooks)
        task = asyncio.create_task(session.run(b""))
        await client.write(WS_HANDSHAKE)
        got = b""
        while not got.endswith(b"hi!"):
            got += await client.read()
        await client.write(b"ping")
        assert await client.read() == b"PING"
        [abort] = hooks.held
        abort("policy changed: denied_by_policy")
        assert await client.read() == b"", "reset, as the HBONE stream would be"
        await asyncio.wait_for(task, 5)
        assert [r.status for r in hooks.records] == [101]

    asyncio.run(main())


def test_a_denied_websocket_handshake_gets_403_and_the_connection_closes() -> None:
    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [403]
        assert b"connection: close" in out and out.endswith(b"RBAC: access denied")
        assert hooks.dials == 0

    run(WS_HANDSHAKE.replace(b"/api/chat", b"/admin") + GET, check)


def test_a_websocket_handshake_the_server_refuses_is_relayed_and_the_connection_closes() -> None:
    """Not 101: the answer goes to the client, and what follows the handshake is never read
    as HTTP (it may be WebSocket frames the client sent early)."""
    seen: list[bytes] = []
    hooks = Hooks()
    refusal = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nno!"
    hooks.upstream = websocket_backend(refusal[:-3], seen)  # type: ignore[method-assign]

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [400]
        assert b"connection: close" in out and out.endswith(b"\r\n\r\nhi!")
        assert len(seen) == 1 and hooks.records[0].status == 400

    run(WS_HANDSHAKE + GET, check, hooks)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_a_switch_the_request_did_not_ask_for_gets_502_and_is_counted(raw: bytes) -> None:
    """The 502 is recorded too (a regression: an exchange that ended in 502 was in no metric)."""
    hooks = Hooks()
    hooks.upstream = raw_backend(raw + b"frames", [])  # type: ignore[method-assign]

    def check(out: bytes, hooks: Hooks) -> None:
        assert statuses(out) == [502]
        assert [r.status for r in hooks.records] == [502]

    run(GET, check, hooks)


def test_a_head_response_is_not_followed_by_a_body_and_the_next_request_dials_anew() -> None:
    """httptools cannot tell llhttp that a HEAD response has no body: its reader ends at the
    head, and the upstream connection is not reused."""

    def check(out: bytes, hooks: Hooks) -> None:
        head, get = out.split(b"HTTP/1.1 200 ")[1:]  # the HEAD response's own length is not sent
        assert b"HEAD /api/v1" not in head and get.endswith(b"\r\n\r\nGET /api/v1 0")
        assert hooks.dials == 2

    run(GET.replace(b"GET", b"HEAD", 1) + GET, check)


def test_a_connection_without_progress_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow or silent clients (half a request line, then nothing) cost a connection only until
    the idle limit."""
    monkeypatch.setattr(http1, "IDLE_TIMEOUT_S", 0.2)

    async def main() -> None:
        _client, proxy_end = pipe_pair()
        session = Http1Session(proxy_end, Flow("10.0.0.1", None, "10.96.0.5", 80), Hooks())
        task = asyncio.create_task(session.run(b"GET /api"))
        await asyncio.wait_for(task, 2)
        assert proxy_end.aborted

    asyncio.run(main())
