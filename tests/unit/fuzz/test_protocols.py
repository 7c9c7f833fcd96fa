"""Fuzzing the sans-IO protocol layers (RELIABILITY H-12, F-12): whatever a hostile peer sends,
each layer either handles it or reports a clean protocol error — never another exception.

- HBONE (server side): random bytes after the preface, and random sequences of well-formed
  HTTP/2 frames (hyperframe) of every type, on valid and invalid streams.
- The config stream's channel: random bytes and random length-prefixed messages.
- Mesh config updates: random JSON-shaped updates are applied or refused with ConfigError.
"""

from __future__ import annotations

from typing import Any

import hyperframe.frame as hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.meshconfig import ConfigError, apply_update
from common.stream import PREFIX, MessageChannel
from ztunnel.hbone import protocol as p

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def server() -> p.HboneProtocol:
    proto = p.HboneProtocol(client=False, clock=lambda: 0.0)
    proto.start()
    proto.data_to_send()
    return proto


def feed(proto: p.HboneProtocol, chunks: list[bytes]) -> None:
    for chunk in chunks:
        events = proto.receive(chunk)  # must not raise
        assert all(isinstance(e, p.Event.__args__) for e in events)
        proto.data_to_send()
        proto.data_to_send_buffers()


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_hbone_random_bytes_after_the_preface(chunks: list[bytes]) -> None:
    feed(server(), [PREFACE + hf.SettingsFrame(0).serialize(), *chunks])


stream_ids = st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1])
headers_block = st.sampled_from(
    [
        b"",
        b"\x82",  # :method GET (indexed)
        b"\x00\x07:method\x07CONNECT\x00\x0a:authority\x0e10.0.0.1:8080",
        b"\xff\xff\xff\xff",  # broken HPACK
    ]
)


@st.composite
def frames(draw: Any) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "data",
                "headers",
                "rst",
                "settings",
                "ping",
                "goaway",
                "window",
                "prio",
                "cont",
                "push",
            ]
        )
    )
    sid = draw(stream_ids)
    frame: hf.Frame
    if kind == "data":
        frame = hf.DataFrame(sid or 1, data=draw(st.binary(max_size=100)))
        if draw(st.booleans()):
            frame.flags.add("END_STREAM")
    elif kind == "headers":
        frame = hf.HeadersFrame(sid or 1, data=draw(headers_block))
        for flag in draw(st.sets(st.sampled_from(["END_STREAM", "END_HEADERS"]))):
            frame.flags.add(flag)
    elif kind == "rst":
        frame = hf.RstStreamFrame(sid or 1, error_code=draw(st.integers(0, 2**32 - 1)))
    elif kind == "settings":
        frame = hf.SettingsFrame(0, settings={draw(st.integers(1, 9)): draw(st.integers(0, 2**31))})
    elif kind == "ping":
        frame = hf.PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
    elif kind == "goaway":
        frame = hf.GoAwayFrame(0, last_stream_id=sid, error_code=draw(st.integers(0, 20)))
    elif kind == "window":
        frame = hf.WindowUpdateFrame(sid, window_increment=draw(st.integers(1, 2**31 - 1)))
    elif kind == "prio":
        frame = hf.PriorityFrame(sid or 1, depends_on=draw(stream_ids))
    elif kind == "cont":
        frame = hf.ContinuationFrame(sid or 1, data=draw(headers_block))
    else:
        frame = hf.PushPromiseFrame(sid or 1, promised_stream_id=2, data=b"")
    return bytes(frame.serialize())


@FUZZ
@given(st.lists(frames(), max_size=12))
def test_hbone_random_frame_sequences(sequence: list[bytes]) -> None:
    proto = server()
    feed(proto, [PREFACE + hf.SettingsFrame(0).serialize(), *sequence])
    # Whatever happened, the connection still answers a PING, or it is closed for good.
    ping = hf.PingFrame(0)
    ping.opaque_data = b"stillup!"
    proto.receive(bytes(ping.serialize()))
    out = proto.data_to_send() + b"".join(proto.data_to_send_buffers())
    if proto.closed is None:
        ack = hf.PingFrame(0, flags=["ACK"])
        ack.opaque_data = b"stillup!"
        assert bytes(ack.serialize()) in out, "an open connection stopped answering"
    else:
        assert proto.receive(bytes(ping.serialize())) == [], "a closed connection still reads"


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6), st.booleans())
def test_config_channel_never_raises(chunks: list[bytes], framed: bool) -> None:
    client, srv = (
        MessageChannel(client_side=True, max_message=1024),
        MessageChannel(client_side=False),
    )
    client.open("/v1/config/stream", {})
    srv.receive(client.data_to_send())
    srv.respond(200)
    client.receive(srv.data_to_send())
    sid = srv.stream_id
    assert sid is not None
    for chunk in chunks:
        payload = PREFIX.pack(0, len(chunk)) + chunk if framed else chunk
        if srv.closed:
            break
        srv.conn.send_data(sid, payload)
        messages = client.receive(srv.data_to_send())
        assert all(isinstance(m, dict) for m in messages)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
resource = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["workload", "service", "policy", "peerauth", "bogus"]),
        "key": json_leaf,
    },
    optional={
        "uid": json_leaf,
        "name": json_leaf,
        "namespace": json_leaf,
        "serviceAccount": json_leaf,
        "node": json_leaf,
        "ip": st.one_of(json_leaf, st.sampled_from(["10.0.0.1", "::1", "300.1.1.1"])),
        "labels": json_value,
        "enrolled": json_leaf,
        "vips": json_value,
        "ports": json_value,
        "endpoints": json_value,
        "spec": json_value,
        "waypoint": json_leaf,
    },
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"version": json_leaf, "upserts": st.one_of(st.lists(resource, max_size=5), json_value)},
        optional={"removes": json_value, "snapshot": json_leaf},
    )
)
def test_mesh_config_updates_are_applied_or_refused_cleanly(update: dict[str, Any]) -> None:
    try:
        state = apply_update({}, update)
    except ConfigError:
        return
    assert all(isinstance(k, str) for k in state)
