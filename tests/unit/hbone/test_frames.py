"""frames.FrameReader: whole frames out of any chunking, checked against hyperframe's encoder."""

from __future__ import annotations

import itertools

import hyperframe.frame as hf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.hbone.lent import read_into
from ztunnel.hbone.frames import (
    HEADER_SIZE,
    RESERVE,
    FrameReader,
    FrameTooLarge,
    parse_header,
)

payloads = st.binary(max_size=3000)


@st.composite
def frame_bytes(draw: st.DrawFn) -> bytes:
    sid = draw(st.sampled_from([0, 1, 3, 2**31 - 1]))
    kind = draw(st.sampled_from(["data", "ping", "window", "headers"]))
    frame: hf.Frame
    if kind == "data":
        frame = hf.DataFrame(sid or 1, data=draw(payloads))
        if draw(st.booleans()):
            frame.flags.add("END_STREAM")
    elif kind == "ping":
        frame = hf.PingFrame(0, opaque_data=b"12345678")
    elif kind == "window":
        frame = hf.WindowUpdateFrame(sid, window_increment=7)
    else:
        frame = hf.HeadersFrame(sid or 1, data=draw(payloads))
    return bytes(frame.serialize())


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_bytes(), max_size=10), st.lists(st.integers(0, 40_000), max_size=30))
def test_any_chunking_gives_back_the_frames_as_encoded(
    frames: list[bytes], cuts: list[int]
) -> None:
    reader = FrameReader(max_frame_size=1 << 20)
    out = []
    for chunk in chunked(b"".join(frames), cuts):
        out += [f.header + f.payload for f in reader.feed(chunk)]
    assert out == frames
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(frame_bytes(), max_size=10),
    st.lists(st.integers(0, 40_000), max_size=30),
    st.lists(st.booleans(), min_size=1),
)
def test_reads_into_lent_buffers_give_back_the_frames_too(
    frames: list[bytes], cuts: list[int], lent: list[bool]
) -> None:
    """Read where the reader lends (as a TLS transport does), or fed bytes, in any mix."""
    reader = FrameReader(max_frame_size=1 << 20)
    out = []
    for i, chunk in enumerate(chunked(b"".join(frames), cuts)):
        got = read_into(reader, chunk) if lent[i % len(lent)] else list(reader.feed(chunk))
        out += [bytes(f.header + f.payload) for f in got]
    assert out == frames
    assert reader.buffered == 0


def test_a_header_alone_reserves_at_most_a_reserve_for_its_payload() -> None:
    reader = FrameReader(max_frame_size=1 << 20)
    data = hf.DataFrame(1, data=b"m" * (1 << 20)).serialize()
    assert read_into(reader, data[: HEADER_SIZE + 10]) == []
    assert len(reader.get_buffer()) == RESERVE
    (whole,) = read_into(reader, data[HEADER_SIZE + 10 :])
    assert whole.payload == b"m" * (1 << 20)


def test_a_read_while_another_readers_frames_are_being_cut_gets_its_own_buffer() -> None:
    """A synchronous transport may deliver to a second connection while the first one's
    frames are handled: the scratch the first read landed in is not lent out again."""
    first, second = FrameReader(100), FrameReader(100)
    one = hf.DataFrame(1, data=b"1").serialize() + hf.DataFrame(1, data=b"2").serialize()
    two = hf.DataFrame(3, data=b"3").serialize()
    buffer = first.get_buffer()
    buffer[: len(one)] = one
    del buffer
    frames = iter(first.buffer_updated(len(one)))
    assert next(frames).payload == b"1"
    assert [f.payload for f in read_into(second, two)] == [b"3"]
    assert next(frames).payload == b"2"


def test_an_oversized_frame_read_into_a_lent_buffer_is_refused_after_whole_ones() -> None:
    reader = FrameReader(max_frame_size=16)
    read = hf.DataFrame(1, data=b"ok").serialize() + hf.DataFrame(1, data=b"x" * 17).serialize()
    buffer = reader.get_buffer()
    buffer[: len(read)] = read
    del buffer
    frames = iter(reader.buffer_updated(len(read)))
    assert next(frames).payload == b"ok"
    with pytest.raises(FrameTooLarge):
        next(frames)
    assert reader.buffered == 0


def test_fields_of_a_frame() -> None:
    frame = hf.DataFrame(5, data=b"abc")
    frame.flags.add("END_STREAM")
    (got,) = FrameReader(100).feed(frame.serialize())
    assert (got.length, got.type, got.flags, got.stream_id, got.payload) == (3, 0, 1, 5, b"abc")


def test_the_reserved_bit_of_the_stream_id_is_ignored() -> None:
    raw = bytearray(hf.DataFrame(5, data=b"x").serialize())
    raw[5] |= 0x80
    assert parse_header(bytes(raw[:HEADER_SIZE]))[3] == 5
    (whole,) = FrameReader(100).feed(bytes(raw))  # cut from the read itself
    reader = FrameReader(100)
    assert list(reader.feed(bytes(raw[:3]))) == []
    (held,) = reader.feed(bytes(raw[3:]))  # cut from what was held back
    assert whole.stream_id == held.stream_id == 5


def test_an_oversized_frame_is_refused_at_its_header_before_its_body_is_kept() -> None:
    reader = FrameReader(max_frame_size=16)
    frame = hf.DataFrame(1, data=b"x" * 17).serialize()
    with pytest.raises(FrameTooLarge) as refused:
        list(reader.feed(frame[:HEADER_SIZE]))
    assert refused.value.length == 17


def test_an_oversized_frame_behind_whole_ones_in_one_read_is_refused_after_them() -> None:
    reader = FrameReader(max_frame_size=16)
    small = hf.DataFrame(1, data=b"ok").serialize()
    read = small + hf.DataFrame(1, data=b"x" * 17).serialize()[: HEADER_SIZE + 1]
    frames = reader.feed(read)
    assert next(frames).payload == b"ok"
    with pytest.raises(FrameTooLarge):
        next(frames)


def test_a_partial_frame_is_held_until_complete() -> None:
    reader = FrameReader(max_frame_size=1 << 20)
    frame = hf.DataFrame(1, data=b"y" * 100_000).serialize()
    assert list(reader.feed(frame[:4])) == []
    assert list(reader.feed(frame[4:50_000])) == []
    assert reader.buffered == 50_000
    (got,) = reader.feed(frame[50_000:] + frame[:3])
    assert got.payload == b"y" * 100_000
    assert reader.buffered == 3
