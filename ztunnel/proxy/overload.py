"""Memory overload (RELIABILITY L-6): shed load in stages before the kernel's OOM killer takes
the node's whole data plane down.

The stages are Envoy's overload actions, in its order, by memory used of the limit:
- ≥ 90 % `CLOSE_IDLE`: pooled HBONE connections without streams get GOAWAY
  (`disable_http_keepalive`);
- ≥ 95 % `REFUSE_NEW`: new connections and streams are refused (`stop_accepting_connections`,
  `stop_accepting_requests`);
- ≥ 98 % `RESET_HEAVIEST`: the connections holding the most buffered bytes are reset, until
  their bytes cover the excess over 95 % (`reset_high_memory_stream`).

"Used" is what the OOM killer weighs: the container's memory cgroup working set (usage minus
inactive file pages, kubelet's eviction signal) against its limit, cgroup v2 or v1. With no
cgroup limit, an explicit limit (`--memory-limit-mib`) is weighed against this process's RSS; with
neither, shedding is off. Everything here but the readers (and `follow`'s log line) is pure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TypeVar

from prometheus_client import Gauge

K = TypeVar("K")


class Stage(IntEnum):
    NORMAL = 0
    CLOSE_IDLE = 1
    REFUSE_NEW = 2
    RESET_HEAVIEST = 3


# Highest first. Envoy's example overload config acts at 0.95 (stop accepting) and 0.98
# (resets); closing idle connections earlier costs nothing but a later handshake.
THRESHOLDS = ((0.98, Stage.RESET_HEAVIEST), (0.95, Stage.REFUSE_NEW), (0.90, Stage.CLOSE_IDLE))
REFUSE_AT = 0.95


@dataclass(frozen=True)
class Usage:
    used: int  # bytes
    limit: int  # bytes, > 0

    @property
    def fraction(self) -> float:
        return self.used / self.limit


def stage_of(usage: Usage | None) -> Stage:
    if usage is None:
        return Stage.NORMAL
    for threshold, stage in THRESHOLDS:
        if usage.fraction >= threshold:
            return stage
    return Stage.NORMAL


def follow(current: Stage, usage: Usage | None, gauge: Gauge, log: logging.Logger) -> Stage:
    """The stage a sample calls for; a change of stage is logged and published on `gauge`."""
    stage = stage_of(usage)
    if stage != current:
        log.warning(
            "memory %s: %s",
            f"{usage.fraction:.0%} of the limit" if usage else "unknown",
            stage.name.lower() if stage else "back to normal",
        )
        gauge.set(stage)
    return stage


def excess(usage: Usage) -> int:
    """Bytes to free to get back below refusing new work."""
    return max(0, usage.used - int(usage.limit * REFUSE_AT))


def heaviest(costs: Iterable[tuple[K, int]], need: int) -> list[K]:
    """The costliest first, until their buffered bytes cover `need`; never one holding nothing
    (resetting it frees nothing, and its user loses a connection for no gain)."""
    chosen: list[K] = []
    covered = 0
    for key, cost in sorted(costs, key=lambda kc: kc[1], reverse=True):
        if covered >= need or cost <= 0:
            break
        chosen.append(key)
        covered += cost
    return chosen


# --- readers -----------------------------------------------------------------------------------

Sampler = Callable[[], "Usage | None"]


@dataclass(frozen=True)
class Cgroup:
    """Where a memory cgroup keeps its limit, usage and inactive file pages (v2 or v1)."""

    directory: Path
    limit: str
    current: str
    inactive: str  # the memory.stat key


V2 = ("memory.max", "memory.current", "inactive_file")
V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as a huge page-rounded number


def find_cgroup(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> Cgroup | None:
    """This process's memory cgroup: the v1 `memory` hierarchy if mounted, else v2's `0::`."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[Cgroup] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            found.insert(0, Cgroup(root / "memory" / path.lstrip("/"), *V1))
        elif controllers == "":
            found.append(Cgroup(root / path.lstrip("/"), *V2))
    return next((c for c in found if (c.directory / c.current).exists()), None)


def cgroup_usage(cgroup: Cgroup) -> Usage | None:
    """The working set against the limit; None without a limit or when unreadable."""
    d = cgroup.directory
    try:
        limit_text = (d / cgroup.limit).read_text().strip()
        if limit_text == "max" or int(limit_text) >= UNLIMITED_V1:
            return None
        current = int((d / cgroup.current).read_text())
        inactive = 0
        for line in (d / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == cgroup.inactive:
                inactive = int(value)
                break
    except (OSError, ValueError):
        return None
    return Usage(max(0, current - inactive), int(limit_text))


def rss_bytes(statm: Path = Path("/proc/self/statm")) -> int:
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sampler(limit_bytes: int) -> Sampler:
    """What to weigh: an explicit limit against RSS, else the limit of the cgroup this process
    is in at each sample (a runtime may move it, or set a limit later); None: nothing to weigh."""
    if limit_bytes:
        return lambda: Usage(rss_bytes(), limit_bytes)

    def of_cgroup() -> Usage | None:
        cgroup = find_cgroup()
        return cgroup_usage(cgroup) if cgroup is not None else None

    return of_cgroup
