"""The pod supervisor: restart policy and backoff (pure), and real processes (no root needed)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from localcluster import pods
from localcluster.shim import ContainerSpec, Shim, ShimSpec, restart_delay, should_restart


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 2, True),
        ("Never", 1, False),
    ],
)
def test_should_restart(policy: str, code: int, expected: bool) -> None:
    assert should_restart(policy, code) is expected


def test_backoff_doubles_then_caps() -> None:
    assert [restart_delay(n) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def _spec(tmp_path: Path, argv: list[str], policy: str) -> ShimSpec:
    log = tmp_path / "c.log"
    container = ContainerSpec("c", argv, {"PATH": os.environ["PATH"]}, None, str(log))
    return ShimSpec(
        "ns/p", [container], policy, 1.0, str(tmp_path / "status.json"), str(tmp_path / "shim.pid")
    )


def _run_until(shim: Shim, done: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shim.step()
        if callable(done) and done():
            return
        time.sleep(0.05)
    pytest.fail("condition not reached")


def test_crashing_container_is_restarted_and_logs_append(tmp_path: Path) -> None:
    shim = Shim(_spec(tmp_path, ["sh", "-c", "echo run; exit 3"], "Always"))
    _run_until(shim, lambda: shim.containers[0].restarts >= 2)
    shim.stop()
    status = json.loads((tmp_path / "status.json").read_text())["containers"]["c"]
    assert status["lastExitCode"] == 3
    assert (tmp_path / "c.log").read_text().count("run") >= 2


def test_never_policy_completes(tmp_path: Path) -> None:
    shim = Shim(_spec(tmp_path, ["true"], "Never"))
    _run_until(shim, lambda: not shim.step())
    observed = {
        "shimAlive": False,
        "containers": json.loads((tmp_path / "status.json").read_text())["containers"],
    }
    assert pods.phase(observed, netns_present=True) == "Completed"


def test_missing_program_is_a_start_error_in_the_log(tmp_path: Path) -> None:
    shim = Shim(_spec(tmp_path, ["/nonexistent/prog"], "Never"))
    _run_until(shim, lambda: shim.containers[0].done)
    assert "failed to start '/nonexistent/prog'" in (tmp_path / "c.log").read_text()
    assert shim.containers[0].last_exit == 127


def test_stop_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)",
    ]
    shim = Shim(_spec(tmp_path, stubborn, "Always"))
    _run_until(shim, lambda: "up" in (tmp_path / "c.log").read_text())
    started = time.monotonic()
    shim.stop()
    assert 0.9 < time.monotonic() - started < 5
    assert shim.containers[0].last_exit == -9


@pytest.mark.parametrize(
    ("observation", "netns", "expected"),
    [
        (
            {
                "shimAlive": True,
                "containers": {
                    "c": {
                        "running": True,
                        "restarts": 0,
                        "done": False,
                        "error": "",
                        "lastExitCode": None,
                    }
                },
            },
            True,
            "Running",
        ),
        (
            {
                "shimAlive": True,
                "containers": {
                    "c": {
                        "running": False,
                        "restarts": 3,
                        "done": False,
                        "error": "",
                        "lastExitCode": 1,
                    }
                },
            },
            True,
            "CrashLoopBackOff",
        ),
        (
            {
                "shimAlive": False,
                "containers": {
                    "c": {
                        "running": False,
                        "restarts": 0,
                        "done": True,
                        "error": "",
                        "lastExitCode": 1,
                    }
                },
            },
            True,
            "Error",
        ),
        ({"shimAlive": False, "containers": {}}, True, "Unknown"),
        ({"shimAlive": True, "containers": {}}, False, "NetworkMissing"),
        ({"shimAlive": True, "containers": {}}, True, "ContainerCreating"),
    ],
)
def test_phase(observation: dict[str, object], netns: bool, expected: str) -> None:
    assert pods.phase(observation, netns) == expected


def test_stopped_shim_does_not_report_pod_completed(tmp_path: Path) -> None:
    """Regression: a shim killed from outside marked its containers done, so `up` never restarted
    the pod (it looked Completed)."""
    shim = Shim(_spec(tmp_path, ["sleep", "30"], "Always"))
    _run_until(shim, lambda: shim.containers[0].proc is not None)
    shim.stop()
    shim._write_status()
    containers = json.loads((tmp_path / "status.json").read_text())["containers"]
    assert pods.phase({"shimAlive": False, "containers": containers}, True) == "Unknown"
