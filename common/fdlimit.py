"""File descriptors: a proxy raises its own soft limit at start and derives its connection cap
from what it got (RELIABILITY L-1). Debian's default soft limit is 1024; with it, a cap of
16 000 would be a promise the accept loop breaks at ~500 proxied connections with EMFILE.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("fdlimit")

# Go's runtime raises the soft limit to the hard one at start (since 1.19); so do we, up to
# this (a kernel's nr_open is 1 048 576 by default).
CEILING = 1 << 20
# Listeners, HBONE pool and config connections, logs, the metrics server: not connections.
RESERVED_FDS = 256


def raise_soft_limit(ceiling: int = CEILING) -> int:
    """The soft RLIMIT_NOFILE, raised toward the hard limit; what it is now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:  # a container may forbid it: keep what we have
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft


def connection_cap(fd_limit: int, ceiling: int) -> int:
    """Proxied connections allowed with `fd_limit` fds: each holds two (Envoy's guidance: a
    cap below half the fd limit), after the reserved ones; never above `ceiling`."""
    return max(1, min(ceiling, (fd_limit - RESERVED_FDS) // 2))


def cap_for_this_process(ceiling: int) -> int:
    """At start: raise the soft limit, then the cap its fds allow."""
    fds = raise_soft_limit()
    cap = connection_cap(fds, ceiling)
    log.info("open-file limit %d: at most %d connections", fds, cap)
    return cap
