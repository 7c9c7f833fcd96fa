"""Compiles the datapath with BCC and gives typed access to its pinned maps.

`compile_datapath(pin_dir)` builds bpf/redirect.c with `-DPIN_DIR=<pin_dir>` and
`-DMAP_VERSION=<MAP_VERSION>`: maps are created pinned there on first load and *reused* on every
later load of the same version (the datapath state survives agent restarts). Programs are
returned as fds for tc attachment (BCC cannot attach tc programs).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf.refusal import load_programs
from bpf.verdicts import Verdict

BPF_DIR = Path(__file__).resolve().parent
SOURCE = BPF_DIR / "redirect.c"
PROGRAMS = ("pod_out", "pod_in", "zt_in")


HEADERS = ("verdicts.h", "packet.h", "maps.h", "redirect.h")  # dependency order
_LOCAL_INCLUDE = re.compile(r'^#include "[^"]+"\s*$', re.MULTILINE)


# The pinned maps' layout version, the suffix of their names: change it with any layout.
MAP_VERSION = "v1"
_PINNED = re.compile(r"^(enrolled|config|verdicts)_(v\d+)$")


def cflags(pin_dir: Path) -> list[str]:
    return [f'-DPIN_DIR="{pin_dir}"', f'-DMAP_VERSION="{MAP_VERSION}"']


def remove_other_versions(pin_dir: Path) -> list[str]:
    """Unpin the maps of another layout version (F-15: left by the agent before an upgrade or
    a downgrade). Programs still attached that use them keep them alive until replaced."""
    removed = []
    for pin in sorted(pin_dir.iterdir()) if pin_dir.is_dir() else []:
        found = _PINNED.match(pin.name)
        if found and found.group(2) != MAP_VERSION:
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
                removed.append(pin.name)
    return removed


def final_source() -> str:
    """The exact text BCC compiles (also what `node_agent --dump-bpf` prints).

    BCC rewrites map calls (`table.lookup()`) only in its main source, not in included files,
    so our own headers are inlined here in dependency order instead of #included.
    """
    parts = [f"/* ---- lib/{h} ---- */\n{(BPF_DIR / 'lib' / h).read_text()}" for h in HEADERS]
    parts.append(f"/* ---- redirect.c ---- */\n{SOURCE.read_text()}")
    return _LOCAL_INCLUDE.sub("", "\n".join(parts))


def ip_key(ip: str) -> ctypes.c_uint32:
    """A __be32 map key: the address's bytes in network order, as the kernel sees them."""
    return ctypes.c_uint32(int.from_bytes(socket.inet_aton(ip), "little"))


@dataclass
class Datapath:
    bpf: Any  # bcc.BPF
    fds: dict[str, int]

    @property
    def enrolled(self) -> Any:
        return self.bpf[b"enrolled"]

    def enroll(self, ip: str, ifindex: int) -> None:
        """Raises OSError with the kernel's errno: E2BIG when the map is full (MAX_PODS)."""
        table = self.enrolled
        try:
            table[ip_key(ip)] = table.Leaf(ifindex, 0)
        except Exception as exc:  # BCC raises a bare Exception for any failed update
            code = ctypes.get_errno() or errno.EIO  # libbcc is loaded with use_errno
            raise OSError(code, f"enrolled map: {os.strerror(code)}") from exc

    def unenroll(self, ip: str) -> None:
        with contextlib.suppress(KeyError):
            del self.enrolled[ip_key(ip)]

    def enrolled_ips(self) -> dict[str, int]:
        out = {}
        for key, leaf in self.enrolled.items():
            out[socket.inet_ntoa(int(key.value).to_bytes(4, "little"))] = int(leaf.ifindex)
        return out

    def configure(self, *, zt_ifindex: int, zt_ip: str, zt_mac: str, mark: int) -> None:
        table = self.bpf[b"config"]
        leaf = table.Leaf()
        leaf.zt_ifindex = zt_ifindex
        leaf.zt_ip = ip_key(zt_ip).value
        for i, byte in enumerate(bytes.fromhex(zt_mac.replace(":", ""))):
            leaf.zt_mac[i] = byte
        leaf.mark = mark
        table[ctypes.c_uint32(0)] = leaf

    def verdicts(self) -> dict[str, int]:
        table = self.bpf[b"verdicts"]
        return {v.name: int(sum(table[ctypes.c_uint32(v.value)])) for v in Verdict}


def compile_datapath(pin_dir: Path) -> Datapath:
    # Imported here, not at the top: only the agent needs BCC (Debian's python3-bpfcc; the PyPI
    # package named "bcc" is unrelated), and `--dump-bpf` or unit tests must work without it.
    from bcc import BPF  # noqa: PLC0415

    pin_dir.mkdir(parents=True, exist_ok=True)
    bpf = BPF(text=final_source().encode(), cflags=cflags(pin_dir))
    return Datapath(bpf, load_programs(bpf, PROGRAMS, BPF.SCHED_CLS))
