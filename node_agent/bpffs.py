"""Making sure the pin directory is on bpffs before BCC pins anything there (RELIABILITY F-13).

Without bpffs, BCC's pinning fails inside the compiler with "bpf_table ... failed to open" and
"Failed to compile BPF module": nothing says the filesystem is missing. Like Cilium's agent,
ours mounts bpffs at /sys/fs/bpf itself when nothing is mounted there (on Kubernetes the
hostPath volume is Bidirectional, so the node sees the mount); any other pin directory that is
not on bpffs is an error that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("node_agent")

MOUNT_POINT = Path("/sys/fs/bpf")
_OCTAL = re.compile(r"\\([0-7]{3})")


def filesystem_of(path: Path, mountinfo: str) -> str:
    """The type of the filesystem `path` (absolute, normalised) is on, from the text of
    /proc/self/mountinfo: the last-mounted of the longest mount points containing it (pure)."""
    best, found = -1, ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        fstype = fields[fields.index("-", 6) + 1]
        if _contains(point, str(path)) and len(point) >= best:
            best, found = len(point), fstype
    return found


def _contains(point: str, path: str) -> bool:
    return point in ("/", path) or path.startswith(point.rstrip("/") + "/")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in octal (\\040 ...)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def ensure(pin_dir: Path) -> None:
    """Raises OSError with a one-line reason if `pin_dir` is not (and cannot be put) on bpffs."""
    path = Path(os.path.normpath(pin_dir.absolute()))
    if filesystem_of(path, _mountinfo()) == "bpf":
        return
    if not _contains(str(MOUNT_POINT), str(path)):
        raise OSError(
            errno.ENOTSUP,
            f"pin directory {path} is not on bpffs (mount -t bpf bpf <dir>, or use a "
            f"directory under {MOUNT_POINT})",
        )
    _mount_bpffs(MOUNT_POINT)
    log.info("bpffs was not mounted: mounted it on %s", MOUNT_POINT)


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _mount_bpffs(point: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    point.mkdir(parents=True, exist_ok=True)
    if libc.mount(b"bpf", str(point).encode(), b"bpf", 0, None) != 0:
        code = ctypes.get_errno()
        raise OSError(
            code, f"bpffs is not mounted on {point}, and mounting it failed: {os.strerror(code)}"
        )
