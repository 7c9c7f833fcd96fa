"""RELIABILITY F-10 in the waypoint: TCP relays and WebSockets held open are judged again on
each new state, closed once denied, and registered before their first judgement."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.unit.waypoint.test_state import waypoint_state
from ztunnel.state.policy import Connection, Decision
from ztunnel.waypoint import state
from ztunnel.waypoint.lasting import Lasting, rejudge

DENY_A: dict[str, Any] = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny-a", "namespace": "mesh"},
    "spec": {
        "targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
        "action": "DENY",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/mesh/sa/a"]}}]}],
    },
}
CONN = Connection("10.244.1.3", "cluster.local/ns/mesh/sa/a", "10.96.0.20", 8080)


def tcp_judge() -> Any:
    target = state.resolve(waypoint_state(), "10.96.0.20", 80)
    assert isinstance(target, state.Target)
    return rejudge(target, lambda st, now: state.authorize_tcp(st, now, CONN))


@pytest.mark.parametrize(
    ("new_state", "closed", "reason"),
    [
        (waypoint_state, 0, None),
        (lambda: waypoint_state(DENY_A), 1, "policy changed: denied_by_policy"),
        (lambda: None, 0, None),  # no state (yet): nothing to judge by, nothing closed
    ],
)
def test_a_held_flow_is_closed_when_a_new_state_denies_it(
    new_state: Any, closed: int, reason: str | None
) -> None:
    current: dict[str, Any] = {"state": waypoint_state()}
    lasting = Lasting(lambda: current["state"])
    aborted: list[str] = []
    with lasting.hold(tcp_judge(), aborted.append, "TCP a->web") as verdict:
        assert verdict.allowed
        current["state"] = new_state()
        assert lasting.recheck() == closed
        assert aborted == ([reason] if reason else [])
        assert lasting.recheck() == 0, "closed once"
    assert len(lasting) == 0


def test_a_flow_is_released_when_it_ends_and_no_longer_judged() -> None:
    current: dict[str, Any] = {"state": waypoint_state()}
    lasting = Lasting(lambda: current["state"])
    aborted: list[str] = []
    with lasting.hold(tcp_judge(), aborted.append, "TCP a->web"):
        assert len(lasting) == 1
    current["state"] = waypoint_state(DENY_A)
    assert lasting.recheck() == 0 and aborted == []


def test_the_first_judgement_is_made_after_registering() -> None:
    """A state that changes between the session's own check and `hold` is what `hold` judges
    by, and a change during the judgement itself still finds the flow registered."""
    current: dict[str, Any] = {"state": waypoint_state(DENY_A)}
    lasting = Lasting(lambda: current["state"])
    seen: list[int] = []

    def judge(st: state.WaypointState) -> Decision:
        seen.append(len(lasting))
        return tcp_judge()(st)  # type: ignore[no-any-return]

    with lasting.hold(judge, lambda reason: None, "TCP a->web") as verdict:
        assert not verdict.allowed and verdict.reason == "denied_by_policy"
    assert seen == [1]


def test_a_target_no_longer_fronted_is_closed() -> None:
    target = state.resolve(waypoint_state(), "10.244.2.3", 8080)  # a pod, addressed directly
    assert isinstance(target, state.Target)
    judge = rejudge(target, lambda st, now: Decision(True, "", "allowed"))
    assert judge(waypoint_state()).allowed
    # The same cluster seen by another waypoint: the pod is not this one's to front any more.
    moved = dataclasses.replace(waypoint_state(), name="other-waypoint")
    assert judge(moved) == Decision(False, "", "not_fronted")
