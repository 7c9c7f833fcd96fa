"""RELIABILITY H-6 (CVE-2024-27316 class): a header block that never ends, or outgrows the
header list we advertise, closes the connection with a GOAWAY before it costs more than that
limit in memory; a large but legitimate header block in CONTINUATION frames still works."""

from __future__ import annotations

import hpack
import hyperframe.frame as hf

from ztunnel.hbone import protocol as p

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMIT = p.MAX_HEADER_LIST_SIZE
CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:8080")]


def server() -> p.HboneProtocol:
    proto = p.HboneProtocol(client=False, clock=lambda: 0.0)
    proto.start()
    proto.data_to_send()
    ack = hf.SettingsFrame(0, flags=["ACK"])  # our SETTINGS (the advertised limit) in force
    proto.receive(PREFACE + hf.SettingsFrame(0).serialize() + ack.serialize())
    proto.data_to_send()
    return proto


def goaway_code(out: bytes) -> int | None:
    """The error code of the GOAWAY frame in `out`, if there is one."""
    at = 0
    while at + 9 <= len(out):
        length = int.from_bytes(out[at : at + 3], "big")
        if out[at + 3] == 0x7:
            return int.from_bytes(out[at + 13 : at + 17], "big")
        at += 9 + length
    return None


def frame_bytes(frame: hf.Frame) -> bytes:
    return bytes(frame.serialize())


def feed_until_closed(proto: p.HboneProtocol, frames: list[bytes]) -> int:
    """Feeds frames one at a time; how many were taken before the connection closed."""
    for i, data in enumerate(frames):
        proto.receive(data)
        if proto.closed is not None:
            return i + 1
    return len(frames)


def test_continuation_bytes_past_the_header_list_limit_get_goaway_enhance_your_calm() -> None:
    proto = server()
    headers = hf.HeadersFrame(1, data=b"\x82")  # no END_HEADERS
    filler = [frame_bytes(hf.ContinuationFrame(1, data=b"\x00" * 16384)) for _ in range(40)]
    taken = feed_until_closed(proto, [frame_bytes(headers), *filler])
    assert proto.closed is not None and proto.closed.error_code == p.ErrorCodes.ENHANCE_YOUR_CALM
    assert proto.closed.fault == "h2_enhance_your_calm"  # the metric's reason
    assert taken <= LIMIT // 16384 + 2, "more than the header list limit was buffered"
    assert goaway_code(proto.data_to_send()) == p.ErrorCodes.ENHANCE_YOUR_CALM
    assert proto.receive(filler[0]) == [], "a closed connection still reads"


def test_an_endless_run_of_empty_continuation_frames_is_cut_off() -> None:
    proto = server()
    headers = hf.HeadersFrame(1, data=b"\x82")
    empty = frame_bytes(hf.ContinuationFrame(1, data=b""))
    taken = feed_until_closed(proto, [frame_bytes(headers)] + [empty] * 10_000)
    assert proto.closed is not None, "an endless header block was accepted"
    assert taken <= 100, f"{taken} frames before the close"
    assert goaway_code(proto.data_to_send()) is not None


def test_a_header_list_over_the_limit_from_a_small_block_gets_goaway() -> None:
    """HPACK lets a small block decode to a large list (one literal indexed, then referenced
    again and again): the limit is on the decoded list too."""
    encoder = hpack.Encoder()
    big = [("x-big", "a" * 4000)] * 20  # ~80 KiB decoded; indexed once, then 1 byte each
    block = encoder.encode(CONNECT + big)
    assert len(block) < LIMIT
    proto = server()
    proto.receive(frame_bytes(hf.HeadersFrame(1, data=block, flags=["END_HEADERS"])))
    assert proto.closed is not None or goaway_code(proto.data_to_send()) is not None


def test_a_large_legitimate_header_block_in_continuation_frames_is_served() -> None:
    block = hpack.Encoder().encode([*CONNECT, ("x-pad", "p" * 30_000)])
    proto = server()
    thirds = [block[: len(block) // 3], block[len(block) // 3 : 2 * len(block) // 3]]
    frames = [
        frame_bytes(hf.HeadersFrame(1, data=thirds[0])),
        frame_bytes(hf.ContinuationFrame(1, data=thirds[1])),
        frame_bytes(
            hf.ContinuationFrame(1, data=block[2 * len(block) // 3 :], flags=["END_HEADERS"])
        ),
    ]
    events = [e for data in frames for e in proto.receive(data)]
    assert proto.closed is None
    assert any(isinstance(e, p.ConnectRequest) for e in events), events
