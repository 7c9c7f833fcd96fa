"""RELIABILITY F-10 in the waypoint: flows that outlive the request that authorized them (a TCP
relay, a WebSocket after its 101) are judged again whenever the waypoint's state changes, and
closed once policy denies them, as ztunnel does with its connections. An HTTP request needs no
such care: each one is authorized against the newest state when it arrives.

No change can slip between the first judgement and the registration (ztunnel's "register
before our initial assert"): `hold` registers first, then judges on the newest state.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ztunnel.state.policy import Decision
from ztunnel.waypoint.state import Target, WaypointState, resolve

log = logging.getLogger("waypoint")

Judge = Callable[[WaypointState], Decision]


@dataclass(frozen=True)
class _Held:
    judge: Judge
    abort: Callable[[str], None]
    what: str


class Lasting:
    def __init__(self, state: Callable[[], WaypointState | None]) -> None:
        self.state = state
        self._held: dict[int, _Held] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def hold(self, judge: Judge, abort: Callable[[str], None], what: str) -> Iterator[Decision]:
        """Registers a flow for the time of the `with`; yields its judgement on the newest
        state (made after registering). `abort(reason)` ends it if a later state denies it."""
        key = next(self._ids)
        self._held[key] = _Held(judge, abort, what)
        try:
            state = self.state()
            yield judge(state) if state is not None else Decision(False, "", "no_config")
        finally:
            self._held.pop(key, None)

    def recheck(self) -> int:
        """Judge every held flow on the newest state; abort those now denied. How many."""
        state = self.state()
        if state is None:
            return 0
        closed = 0
        for key, held in list(self._held.items()):
            verdict = held.judge(state)
            if verdict.allowed:
                continue
            self._held.pop(key, None)
            log.info("%s closed: policy changed: %s", held.what, verdict.reason)
            held.abort(f"policy changed: {verdict.reason}")
            closed += 1
        return closed


def rejudge(target: Target, check: Callable[[WaypointState, Target], Decision]) -> Judge:
    """`check` on the target as a newer state resolves it (it may no longer be fronted)."""

    def judge(state: WaypointState) -> Decision:
        now = resolve(state, target.ip, target.port)
        return Decision(False, "", now) if isinstance(now, str) else check(state, now)

    return judge
