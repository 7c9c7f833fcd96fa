"""Fuzzing the waypoint's HTTP sessions (RELIABILITY H-12, W-1…W-4): whatever a client sends —
random bytes, random HTTP/1.1-ish lines, random HTTP/2 frames after the preface — the session
ends cleanly (an answer or a close), raises nothing, and leaves no task behind."""

from __future__ import annotations

import asyncio

import hpack
import hyperframe.frame as hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.waypoint import test_http1
from tests.unit.waypoint.test_http1 import Hooks, pipe_pair
from ztunnel.waypoint.exchange import Flow
from ztunnel.waypoint.http1 import Http1Session
from ztunnel.waypoint.http2 import Http2Session

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_session(kind: type[Http1Session] | type[Http2Session], chunks: list[bytes]) -> None:
    async def main() -> None:
        client, proxy_end = pipe_pair()
        hooks = Hooks()
        session = kind(proxy_end, Flow("10.0.0.1", None, "10.96.0.5", 80), hooks)
        task = asyncio.create_task(session.run(b""))
        for chunk in chunks:
            await client.write(chunk)
        client.end()
        await asyncio.wait_for(task, 5)  # raises if the session raised
        for t in hooks.tasks:
            t.cancel()
        await asyncio.gather(*hooks.tasks, return_exceptions=True)
        assert task.exception() is None

    asyncio.run(main())


LINE = st.sampled_from(
    [
        b"GET /api/x HTTP/1.1\r\n",
        b"POST /api/x HTTP/1.1\r\n",
        b"Host: w\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: -1\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"X_Y: 1\r\n",
        b" folded\r\n",
        b"\r\n",
        b"3\r\nabc\r\n",
        b"0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"\n",
        b"GET http://x/ HTTP/1.0\r\n",
    ]
)


@FUZZ
@given(st.lists(st.one_of(LINE, st.binary(max_size=64)), max_size=12))
def test_http1_session_survives_anything(chunks: list[bytes]) -> None:
    run_session(Http1Session, chunks)


def request_block(path: str) -> bytes:
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "w")]
    return bytes(hpack.Encoder().encode(headers))


BLOCK = st.one_of(
    st.binary(max_size=32), st.sampled_from(["/api/x", "/admin", "x"]).map(request_block)
)
FRAME = st.one_of(
    st.builds(
        lambda sid, data, end: hf.DataFrame(sid, data, flags=["END_STREAM"] if end else []),
        st.integers(1, 7),
        st.binary(max_size=32),
        st.booleans(),
    ),
    st.builds(
        lambda sid, block, end: hf.HeadersFrame(
            sid, block, flags=["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
        ),
        st.integers(1, 7),
        BLOCK,
        st.booleans(),
    ),
    st.builds(hf.RstStreamFrame, st.integers(1, 7)),
    st.builds(lambda inc: hf.WindowUpdateFrame(0, inc), st.integers(0, 2**31 - 1)),
    st.builds(lambda: hf.SettingsFrame(0)),
    st.builds(lambda: hf.PingFrame(0, b"\0" * 8)),
    st.builds(lambda sid: hf.GoAwayFrame(0, last_stream_id=sid), st.integers(0, 7)),
)


@FUZZ
@given(st.lists(FRAME, max_size=10))
def test_http2_session_survives_any_frames(frames: list[hf.Frame]) -> None:
    run_session(
        Http2Session, [PREFACE, hf.SettingsFrame(0).serialize()] + [f.serialize() for f in frames]
    )


@FUZZ
@given(st.binary(max_size=200))
def test_http2_session_survives_random_bytes_after_the_preface(data: bytes) -> None:
    run_session(Http2Session, [PREFACE, data])


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [test_http1.GET, b"POST /api/x HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc"]
        ),
        max_size=2,
    ),
    st.binary(max_size=60),
    st.integers(0, 200),
)
def test_http1_answers_are_well_formed_whatever_is_spliced_into_requests(
    valid: list[bytes], noise: bytes, at: int
) -> None:
    """Valid requests with random bytes spliced in: the session ends (`run` returns) and every
    complete answer is well formed, with a status the session gives."""
    raw = b"".join(valid)
    at %= len(raw) + 1
    raw = raw[:at] + noise + raw[at:]

    def check(out: bytes, hooks: test_http1.Hooks) -> None:
        assert out == b"" or out.startswith(b"HTTP/1.1 ")
        assert all(status in (200, 400, 403, 431, 501, 505) for status in test_http1.statuses(out))

    test_http1.run(raw, check)
