"""HBONE framing in isolation (one core, in process, no kernel): what HTTP/2 framing costs per
byte next to what TLS itself costs per byte, both measured here in the same run.

- framing: the sans-IO HboneProtocol pair moving 256 KiB writes (ztunnel's socket read size)
  from client to server, acknowledged as ztunnel does; the server reads 64 KiB pieces into the
  buffers it lends, as a TLS transport does (the copy stands in for the decryption's output).
- TLS: the same bytes through a TLS 1.3 (ECDSA P-256, AES-GCM) SSLObject pair over memory BIOs:
  encrypt at one end, decrypt at the other — the work every mTLS relay does per byte.
The framing share is framing / (framing + TLS): PERF.md's "HTTP/2 framing costs ≤ 20 %" with
the kernel and the event loop (the same for any relay) left out.
"""

from __future__ import annotations

import time
from pathlib import Path

import handshake  # scripts/handshake.py

from common import heap, tls
from ztunnel.hbone import protocol as p

WRITE = 256 * 1024
PIECE = 64 * 1024
MIB = 1024 * 1024


def framing_us_per_mib(total_mib: int = 64) -> tuple[float, float]:
    """(send, receive) µs per MiB of HBONE DATA through the sans-IO layer."""
    client = p.HboneProtocol(client=True, clock=time.monotonic)
    server = p.HboneProtocol(client=False, clock=time.monotonic)
    client.start()
    server.start()
    _pump(client, server)
    sid = client.open("10.0.0.1:80")
    _pump(client, server)
    server.respond(sid, 200)
    _pump(client, server)
    chunk = b"x" * WRITE
    sending = receiving = 0.0
    for _ in range(total_mib * MIB // WRITE):
        t0 = time.perf_counter()
        client.send(sid, chunk)
        buffers = client.data_to_send_buffers()  # ztunnel hands these to writelines as they are
        t1 = time.perf_counter()
        wire = b"".join(buffers)
        pieces = [wire[i : i + PIECE] for i in range(0, len(wire), PIECE)]  # TLS's output
        t2 = time.perf_counter()
        for piece in pieces:
            view = memoryview(piece)
            while view:  # read into the buffers it lends, as uvloop's TLS transport does
                buffer = server.get_buffer()
                n = min(len(buffer), len(view))
                buffer[:n], view = view[:n], view[n:]
                del buffer
                for event in server.buffer_updated(n):
                    if isinstance(event, p.Data):
                        server.ack(sid, event.flow_controlled_length)
        t3 = time.perf_counter()
        client.receive(server.data_to_send())
        sending += t1 - t0
        receiving += t3 - t2
    return sending / total_mib * 1e6, receiving / total_mib * 1e6


def _pump(a: p.HboneProtocol, b: p.HboneProtocol) -> None:
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_b and not to_a:
            return
        if to_b:
            b.receive(to_b)
        if to_a:
            a.receive(to_a)


def tls_us_per_mib(pki: Path, total_mib: int = 64) -> float:
    """µs per MiB to encrypt at one end and decrypt at the other (TLS 1.3, memory BIOs)."""
    ca, cert = (pki / "ca.pem").read_text(), (pki / "server.pem").read_text()
    server_ctx = tls.server_context([cert], (pki / "server.key").read_bytes(), bundle_pem=[ca])
    client_ctx = tls.client_context([ca])
    (c, _, c_out), (s, s_in, _) = handshake.pair(client_ctx, server_ctx)
    chunk = b"x" * WRITE
    started = time.perf_counter()
    for _ in range(total_mib * MIB // WRITE):
        c.write(chunk)
        s_in.write(c_out.read())
        while s_in.pending:
            s.read(WRITE)
    return (time.perf_counter() - started) / total_mib * 1e6


def measure(pki: Path) -> dict[str, float]:
    framing_us_per_mib(total_mib=16)  # warm-up: the first MiBs pay for the allocator's growth
    heap.keep_freed()  # as ztunnel does at start: its buffers are reused, not faulted in again
    send, receive = framing_us_per_mib()
    crypto = tls_us_per_mib(pki)
    return {
        "send_us_per_mib": send,
        "receive_us_per_mib": receive,
        "tls_us_per_mib": crypto,
        "framing_share": (send + receive) / (send + receive + crypto),
    }
