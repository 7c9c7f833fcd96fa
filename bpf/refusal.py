"""Why the kernel refused the datapath, from the verifier's log (RELIABILITY F-13).

BCC raises a bare "Failed to load BPF program: Invalid argument" and prints the verifier's log to
the process's stderr. A kernel without one of the helpers the programs call names it there by
number ("invalid func unknown#124"): `load_programs` keeps that log and says which helper is
missing and which Linux added it, so the agent's readiness and logs name the cause.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

# The helpers the datapath calls: uapi/linux/bpf.h's number (how a kernel without the helper
# names it), name, and the Linux version that added it (numbers checked against the header).
HELPERS = {
    9: ("bpf_skb_store_bytes", "4.1"),
    23: ("bpf_redirect", "4.4"),
    86: ("bpf_sk_release", "4.20"),
    99: ("bpf_skc_lookup_tcp", "5.2"),
    124: ("bpf_sk_assign", "5.7"),
    155: ("bpf_redirect_peer", "5.10"),
}
# "invalid func unknown#124" (a kernel without it), "unknown func bpf_sk_assign#124", or
# "program of this type cannot use helper bpf_sk_assign#124".
_HELPER = re.compile(r"(?:invalid func|unknown func|cannot use helper) (\w+)#(\d+)")


def refusal(log: str) -> str | None:
    """The missing or refused helper a verifier log names, as one line; None if none."""
    found = _HELPER.search(log)
    if found is None:
        return None
    number = int(found.group(2))
    if number in HELPERS:
        name, since = HELPERS[number]
        return f"the kernel refuses BPF helper {name} (#{number}, Linux >= {since})"
    return f"the kernel refuses BPF helper {found.group(1)}#{number}"


@contextlib.contextmanager
def stderr_kept() -> Iterator[Callable[[], str]]:
    """Copies what is written to fd 2 meanwhile (C libraries included); the copy is written
    to the real stderr afterwards, so the log loses nothing."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as copy:
        os.dup2(copy.fileno(), 2)
        try:
            yield lambda: _read(copy)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.write(2, _read(copy).encode())


def _read(copy: IO[bytes]) -> str:
    copy.flush()
    copy.seek(0)
    return copy.read().decode(errors="replace")


def load_programs(bpf: Any, names: tuple[str, ...], prog_type: int) -> dict[str, int]:
    """Loads each program of a compiled BCC module; a refusal raises RuntimeError saying why."""
    fds = {}
    for name in names:
        with stderr_kept() as log:
            try:
                fds[name] = int(bpf.load_func(name.encode(), prog_type).fd)
            except Exception as exc:  # BCC raises bare Exceptions
                why = refusal(log()) or str(exc)
                raise RuntimeError(f"cannot load {name}: {why}") from exc
    return fds
