"""common.heap: a proxy's freed buffers are kept for reuse (no page faults per read), and handed
back under memory pressure. Each case runs in its own interpreter: malloc settings are global."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHURN = """
import resource, sys
from common import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed()
def churn():
    # A stream's buffers: reads of up to 256 KiB, a few alive at once, freed out of order.
    for _ in range(500):
        a = bytes(256 * 1024); b = bytes(200 * 1024); c = bytes(256 * 1024)
        del b
        d = bytes(300 * 1024)
        del a, c, d
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

GIVE_BACK = """
from common import heap
from ztunnel.proxy.overload import rss_bytes
assert heap.keep_freed()
held = [bytes(256 * 1024) for _ in range(40)]  # 10 MiB, under the trim threshold
base = rss_bytes()
del held
kept = rss_bytes()
heap.give_back()
print(base - kept, kept - rss_bytes())
"""


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_buffers_freed_and_allocated_again_do_not_fault_in_again() -> None:
    default, kept = int(run(CHURN, "default")), int(run(CHURN, "keep"))
    assert default > 10_000  # glibc's own settings: pages map and fault in on every reuse
    assert kept < default // 100


def test_freed_memory_stays_until_given_back() -> None:
    freed_at_once, given_back = map(int, run(GIVE_BACK).split())
    assert freed_at_once < 2 * 1024 * 1024  # kept for the next reads
    assert given_back > 4 * 1024 * 1024  # the free pages of those 10 MiB (~5.4 MiB here)
