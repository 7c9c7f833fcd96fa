"""Fuzz targets: each takes bytes and either handles them or raises one of its documented
error types (the h11 invariant, RELIABILITY H-12/F-12/I-11); the target itself catches the
documented ones, so any exception escaping `run` is a crash.

Every target is deterministic (the same bytes do the same thing), so a corpus replays exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by each target when it runs: after atheris instruments them
    from ztunnel.waypoint.authz import Request

CORPUS = Path(__file__).parent / "corpus"
# What atheris instruments for coverage when a target runs under scripts/fuzz.
INSTRUMENT = ["api", "common", "controller", "ztunnel", "h2", "hpack", "hyperframe", "yaml"]


class InvariantBroken(AssertionError):
    """A target's own check failed (not an exception of the code under test)."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise InvariantBroken(what)


def _chunks(data: bytes) -> tuple[int, bytes]:
    """First byte: the read size (1-256) the rest is fed in; the rest: the bytes."""
    if not data:
        return 1, b""
    return data[0] + 1, data[1:]


# --- HTTP/1.1 (waypoint h1wire) ---------------------------------------------------------------


def _drain_h1(reader: object, size: int, body: bytes) -> list[object]:
    from ztunnel.waypoint import h1wire  # noqa: PLC0415

    assert isinstance(reader, h1wire.RequestReader | h1wire.ResponseReader)
    events: list[object] = []
    try:
        for start in range(0, len(body), size):
            reader.feed(body[start : start + size])
            while (event := reader.next_event()) is not None:
                events.append(event)
        reader.feed(b"")
        while (event := reader.next_event()) is not None:
            events.append(event)
    except h1wire.ProtocolError as exc:
        _check(exc.status in (400, 431, 501, 505), f"status {exc.status}")
    return events


def h1_request(data: bytes) -> None:
    """The waypoint's request reader; every head it accepts, written back out as the waypoint
    forwards it, reads again as the same head (what the upstream sees is what policy judged)."""
    from ztunnel.waypoint import h1wire  # noqa: PLC0415

    size, body = _chunks(data)
    events = _drain_h1(h1wire.RequestReader(max_head=2048), size, body)
    for head in events:
        if not isinstance(head, h1wire.Head) or head.upgrade:
            continue
        _check(head.version in ("1.0", "1.1"), f"version {head.version}")
        _check(not (head.chunked and head.length is not None), "both CL and TE")
        again = h1wire.RequestReader(max_head=1 << 20)
        again.feed(h1wire.request_head(head.method, head.target, head.headers))
        out = again.next_event()
        _check(isinstance(out, h1wire.Head), f"forwarded head does not parse: {head!r}")
        assert isinstance(out, h1wire.Head)
        _check(
            (out.method, out.target, out.headers) == (head.method, head.target, head.headers),
            f"forwarded head reads differently: {head!r} vs {out!r}",
        )


def h1_response(data: bytes) -> None:
    """The waypoint's response reader, after a GET, a HEAD or a WebSocket upgrade."""
    from ztunnel.waypoint import h1wire  # noqa: PLC0415

    mode, data = (data[0], data[1:]) if data else (0, b"")
    reader = h1wire.ResponseReader(max_head=2048)
    reader.expect("HEAD" if mode & 1 else "GET", websocket=bool(mode & 2))
    size, body = _chunks(data)
    _drain_h1(reader, size, body)


# --- HBONE / HTTP/2 -----------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _drive(proto: object, chunks: list[bytes], *, buffered: bool, answer: int) -> None:  # noqa: PLR0912
    """Feed `chunks`; answer CONNECTs and data as an HBONE endpoint would (bits of `answer`:
    1 respond 200, 2 echo data, 4 end, 8 reset, 16 ack). Only the declared events come out."""
    from ztunnel.hbone import protocol as p  # noqa: PLC0415

    assert isinstance(proto, p.HboneProtocol)
    kinds = p.Event.__args__
    for chunk in chunks:
        if buffered:
            events: list[p.Event] = []
            view, left = memoryview(chunk), len(chunk)
            while left and proto.closed is None:
                buf = proto.get_buffer()
                n = min(len(buf), left)
                buf[:n] = view[len(chunk) - left : len(chunk) - left + n]
                left -= n
                events += proto.buffer_updated(n)
        else:
            events = proto.receive(chunk)
        for event in events:
            _check(isinstance(event, kinds), f"undeclared event {event!r}")
            if isinstance(event, p.ConnectRequest):
                _check(p.parse_authority(event.authority) is not None, "authority")
                if answer & 1:
                    proto.respond(event.stream_id, 200)
            elif isinstance(event, p.Data):
                if answer & 2:
                    proto.send(event.stream_id, bytes(event.data[:64]))
                if answer & 16:
                    proto.ack(event.stream_id, event.flow_controlled_length)
                if answer & 4:
                    proto.end(event.stream_id)
                if answer & 8:
                    proto.reset(event.stream_id)
            elif isinstance(event, p.Closed):
                _check(proto.closed is not None, "Closed event but protocol open")
        proto.data_to_send_buffers()
        proto.window(1)
    proto.data_to_send()


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def hbone_server(data: bytes) -> None:
    """Raw bytes after a valid preface + SETTINGS, into the server (inbound 15008). Byte 0:
    read size; byte 1: answer bits, bit 7 the BufferedProtocol path."""
    from ztunnel.hbone import protocol as p  # noqa: PLC0415

    size, rest = _chunks(data)
    answer, rest = (rest[0], rest[1:]) if rest else (0, b"")
    proto = p.HboneProtocol(client=False, clock=lambda: 0.0)
    proto.start()
    proto.data_to_send()
    chunks = [PREFACE + EMPTY_SETTINGS, *_split(rest, size)]
    _drive(proto, chunks, buffered=bool(answer & 128), answer=answer)


def hbone_client(data: bytes) -> None:
    """Raw bytes from a hostile HBONE server, after our CONNECT (outbound pool dials)."""
    from ztunnel.hbone import protocol as p  # noqa: PLC0415

    size, rest = _chunks(data)
    answer, rest = (rest[0], rest[1:]) if rest else (0, b"")
    proto = p.HboneProtocol(client=True, clock=lambda: 0.0)
    proto.start()
    stream = proto.open("10.0.0.1:8080")
    proto.send(stream, b"hello")
    proto.data_to_send()
    _drive(proto, [EMPTY_SETTINGS, *_split(rest, size)], buffered=bool(answer & 128), answer=answer)


_HPACK_BLOCKS = [
    b"",
    b"\x82",  # :method GET
    b"\x00\x07:method\x07CONNECT\x00\x0a:authority\x0e10.0.0.1:8080",
    b"\x00\x07:method\x07CONNECT\x00\x0a:authority\x0a[::1]:8080",
    b"\x00\x07:method\x07CONNECT\x00\x0a:authority\x0bexample:80",
    b"\x00\x07:method\x07CONNECT\x00\x0a:authority\x0e10.0.0.1:8080\x00\x05:path\x01/",
    b"\xff\xff\xff\xff",
]


def hbone_frames(data: bytes) -> None:
    """Well-formed frame sequences into the server: each 8-byte record is (type, flags,
    stream, payload kind, payload length, ...), so mutations explore frame orders, not framing."""
    from ztunnel.hbone import protocol as p  # noqa: PLC0415

    out = bytearray()
    for i in range(0, len(data) - 7, 8):
        kind, flags, stream, pk, length, a, b, c = data[i : i + 8]
        kind %= 11
        stream_id = (0, 1, 3, 5, 2, 7, 2**31 - 1, stream)[stream % 8] if stream < 200 else stream
        if pk % 4 == 0 and kind in (1, 9):
            payload = _HPACK_BLOCKS[(a + b) % len(_HPACK_BLOCKS)]
            if flags & 0x20:  # PRIORITY in HEADERS: its 5 bytes first
                payload = bytes((0, 0, 0, c & 3, 16)) + payload
            if flags & 0x8:
                payload = bytes((c % 4,)) + payload + bytes(c % 4)
        elif pk % 4 == 1:
            payload = bytes((a, b, c, 0)) * (length % 16)
        elif pk % 4 == 2:
            payload = (a << 24 | b << 16 | c << 8 | length).to_bytes(4, "big")
        else:
            payload = bytes(length % 32)
        size = len(payload)
        out += bytes((size >> 16 & 0xFF, size >> 8 & 0xFF, size & 0xFF, kind, flags))
        out += stream_id.to_bytes(4, "big") + payload
    proto = p.HboneProtocol(client=False, clock=lambda: 0.0)
    proto.start()
    proto.data_to_send()
    mode = data[0] if data else 0
    _drive(
        proto,
        [PREFACE + EMPTY_SETTINGS, *_split(bytes(out), (mode & 63) * 4 + 1)],
        buffered=bool(mode & 128),
        answer=0x1F if mode & 64 else 0x11,
    )


def frame_reader(data: bytes) -> None:
    """frames.FrameReader against a reference split: both feeding paths, any read size, give
    exactly the frames a plain parse gives, or FrameTooLarge for the first overlong one."""
    from ztunnel.hbone import frames as f  # noqa: PLC0415

    size, stream = _chunks(data)
    limit = 1024
    expected: list[tuple[bytes, bytes]] = []
    too_large = False
    at = 0
    while len(stream) - at >= f.HEADER_SIZE:
        length = f.parse_header(stream, at)[0]
        if length > limit:
            too_large = True
            break
        if at + f.HEADER_SIZE + length > len(stream):
            break
        expected.append((stream[at : at + 9], stream[at + 9 : at + 9 + length]))
        at += 9 + length
    for buffered in (False, True):
        reader = f.FrameReader(limit)
        got: list[tuple[bytes, bytes]] = []
        raised = False
        try:  # frames one by one: those before an overlong header count; nothing after it
            for start in range(0, len(stream), size):
                piece = stream[start : start + size]
                if buffered:
                    while piece:
                        buf = reader.get_buffer()
                        n = min(len(buf), len(piece))
                        buf[:n] = piece[:n]
                        piece = piece[n:]
                        for fr in reader.buffer_updated(n):
                            got.append((fr.header, bytes(fr.payload)))
                else:
                    for fr in reader.feed(piece):
                        got.append((fr.header, bytes(fr.payload)))
        except f.FrameTooLarge:
            raised = True
        _check(got == expected, f"frames differ (buffered={buffered})")
        _check(raised == too_large, f"FrameTooLarge {raised} != {too_large}")


def authority(data: bytes) -> None:
    """The CONNECT `:authority` parser: an (ip, port) that formats back to itself, or
    AuthorityError; never a hostname."""
    import ipaddress  # noqa: PLC0415

    from ztunnel.hbone import protocol as p  # noqa: PLC0415

    text = data.decode("utf-8", "replace")
    try:
        ip, port = p.parse_authority(text)
    except p.AuthorityError:
        return
    _check(0 < port < 65536, f"port {port}")
    ipaddress.ip_address(ip)
    again = p.format_authority(ip, port)
    _check(p.parse_authority(again) == (ip, port), f"{again!r} does not parse back")


# --- config and policy --------------------------------------------------------------------------


def _probe_policies(state: object) -> None:
    from ztunnel.state import policy  # noqa: PLC0415
    from ztunnel.state.workloads import Snapshot  # noqa: PLC0415

    assert isinstance(state, Snapshot)
    conn = policy.Connection("10.244.1.3", "cluster.local/ns/demo/sa/client", "10.244.1.4", 80)
    for namespace in ("demo", "istio-system", "other"):
        policy.evaluate(state.policies, namespace, {"app": "server"}, conn)
        policy.mtls_mode(state.peer_auths, namespace, {"app": "server"}, 80)


def mesh_config(data: bytes) -> None:
    """A config-stream message (JSON) as a proxy applies it: validated (ConfigError NACKs it),
    then built into ztunnel's and a waypoint's state and evaluated — none of which may fail
    for an update validation accepted (the proxy would neither ACK nor NACK)."""
    from api.meshconfig import ConfigError, apply_update  # noqa: PLC0415
    from ztunnel.state import workloads  # noqa: PLC0415
    from ztunnel.waypoint import authz  # noqa: PLC0415
    from ztunnel.waypoint import state as waypoint_state  # noqa: PLC0415

    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(message, dict):
        return
    try:
        new = apply_update({}, message)
    except ConfigError:
        return
    snapshot = workloads.build(new, "node1", "cluster.local", int(message["version"]))
    _probe_policies(snapshot)
    wp = waypoint_state.build(new, "demo", "waypoint", "cluster.local", 1)
    request = _request()
    authz.evaluate_l7(wp.l7, "demo", "waypoint", ["server"], request)
    waypoint_state.resolve(wp, "10.96.0.11", 80)


def _request() -> Request:
    """An HTTP request for the compiled L7 policies to judge."""
    from ztunnel.waypoint import authz  # noqa: PLC0415

    client = "cluster.local/ns/demo/sa/client"
    return authz.Request("10.244.1.3", client, "10.244.1.4", 80, "GET", "/a", "server", {"x": "y"})


def manifest(data: bytes) -> None:
    """YAML manifests (`ambientctl apply`, `--config FILE`): ManifestError/ObjectError, or
    objects whose policies compile (both forms) and evaluate."""
    from api.errors import ManifestError, ObjectError  # noqa: PLC0415
    from api.manifest import load_manifest  # noqa: PLC0415
    from ztunnel.state import policy  # noqa: PLC0415
    from ztunnel.waypoint import authz  # noqa: PLC0415

    try:
        objects = load_manifest(data.decode("utf-8", "replace"))
    except (ManifestError, ObjectError, RecursionError):
        return
    conn = policy.Connection("10.244.1.3", "cluster.local/ns/demo/sa/client", "10.244.1.4", 80)
    request = _request()
    for obj in objects:
        if obj.get("kind") == "AuthorizationPolicy":
            if (l4 := policy.compile_policy(obj)) is not None:
                l4.matches(conn)
            if (l7 := authz.compile_l7(obj)) is not None:
                l7.matches(request)
        elif obj.get("kind") == "PeerAuthentication":
            policy.mtls_mode([obj], obj["metadata"]["namespace"], {}, 80)


# --- CA -----------------------------------------------------------------------------------------


def csr(data: bytes) -> None:
    """The CA's CSR check on hostile PEM (or DER wrapped as PEM): a key or a Refusal."""
    import base64  # noqa: PLC0415

    from api.spiffe import SpiffeId  # noqa: PLC0415
    from controller.ca.csr import check_csr  # noqa: PLC0415
    from controller.ca.refusal import Refusal  # noqa: PLC0415

    identity = SpiffeId("cluster.local", "demo", "client")
    if data.startswith(b"-----"):
        text = data.decode("utf-8", "replace")
    else:
        b64 = base64.encodebytes(data).decode()
        text = f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"
    try:
        check_csr(text, identity)
    except Refusal:
        return


# Bugs found by these targets and not fixed yet: (exception type, function that raised it),
# per target. A fuzz run tolerates them unless `--strict`, so CI keeps looking for new ones.
# Empty: every bug found so far is fixed and pinned in tests/unit/fuzz/test_fuzz_targets.py.
KNOWN_BUGS: dict[str, set[tuple[str, str]]] = {}


def known_bug(target: str, exc: BaseException) -> bool:
    """Is `exc` one of `target`'s known, unfixed bugs?"""
    tb, frames = exc.__traceback__, set()
    while tb is not None:
        frames.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    kind = type(exc).__name__
    return any(kind == k and f in frames for k, f in KNOWN_BUGS.get(target, set()))


def tolerant(name: str, run: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """`run`, with the target's known bugs taken as handled."""

    def guarded(data: bytes) -> None:
        try:
            run(data)
        except Exception as exc:
            if not known_bug(name, exc):
                raise

    return guarded


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    max_len: int  # libFuzzer's -max_len


TARGETS = {
    t.name: t
    for t in (
        Target("h1-request", h1_request, 4096),
        Target("h1-response", h1_response, 4096),
        Target("hbone-server", hbone_server, 4096),
        Target("hbone-client", hbone_client, 4096),
        Target("hbone-frames", hbone_frames, 2048),
        Target("frame-reader", frame_reader, 4096),
        Target("authority", authority, 256),
        Target("mesh-config", mesh_config, 8192),
        Target("manifest", manifest, 8192),
        Target("csr", csr, 4096),
    )
}


def seeds(name: str) -> list[Path]:
    folder = CORPUS / name
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
