"""Run a loaded BPF program on a crafted packet (libbpf's bpf_prog_test_run_opts via ctypes),
so the datapath's decisions are checked without any traffic. Test-only."""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
ETH_P_IP = 0x0800
IPPROTO_TCP, IPPROTO_UDP = 6, 17


class _Opts(ctypes.Structure):
    _fields_ = (  # struct bpf_test_run_opts (libbpf 1.x)
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


# struct __sk_buff up to ingress_ifindex: len, pkt_type, mark, queue_mapping, protocol,
# vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex (10 x u32).
INGRESS_IFINDEX_OFFSET = 9
SKB_CTX_WORDS = 48  # generous: the kernel zero-checks fields it does not accept


_libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)


def packet(src: str, dst: str, sport: int, dport: int, proto: int = IPPROTO_TCP) -> bytes:
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ETH_P_IP)
    l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    if proto == IPPROTO_UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0) + b"\x00" * 12
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        0,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return eth + ip + l4


def run(prog_fd: int, data: bytes, *, ingress_ifindex: int = 0) -> int:
    """The program's return code for `data`."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    opts = _Opts(
        sz=ctypes.sizeof(_Opts),
        data_in=ctypes.cast(buf, ctypes.c_void_p),
        data_size_in=len(data),
        data_out=ctypes.cast(out, ctypes.c_void_p),
        data_size_out=len(out),
        repeat=1,
    )
    ctx = None
    if ingress_ifindex:
        ctx = (ctypes.c_uint32 * SKB_CTX_WORDS)()
        ctx[INGRESS_IFINDEX_OFFSET] = ingress_ifindex
        opts.ctx_in = ctypes.cast(ctx, ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    err = _libbpf.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if err:
        raise OSError(ctypes.get_errno(), f"bpf_prog_test_run_opts failed ({err})")
    return int(opts.retval)
