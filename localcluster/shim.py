"""The per-pod supervisor (containerd-shim's job): runs a pod's containers inside its netns.

Started by `localcluster.pods` as `nsenter --net=<pod netns> python -m localcluster.shim SPEC`.
It daemonizes (so it is nobody's child and never a zombie of the CLI), writes its pid file, and
then runs every container, restarting per `restartPolicy` with kubelet-style exponential backoff.
Containers die with the shim (PR_SET_PDEATHSIG); on SIGTERM it stops them within the pod's grace
period, as the kubelet does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# kubelet: 10 s doubling to 5 min. Locally, pods are dev processes: restart fast, cap low.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0
# kubelet resets the backoff after 10 min of running; 60 s is long enough to call a process stable.
BACKOFF_RESET_AFTER_S = 60.0
POLL_S = 0.1
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    log: str


@dataclass(frozen=True)
class ShimSpec:
    pod: str  # "namespace/name", for messages
    containers: list[ContainerSpec]
    restart_policy: str
    grace_s: float
    status_path: str
    pid_path: str

    @staticmethod
    def load(path: Path) -> ShimSpec:
        raw = json.loads(path.read_text())
        raw["containers"] = [ContainerSpec(**c) for c in raw["containers"]]
        return ShimSpec(**raw)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def restart_delay(backoff_step: int) -> float:
    return float(min(BACKOFF_BASE_S * 2**backoff_step, BACKOFF_CAP_S))


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


@dataclass
class _Container:
    spec: ContainerSpec
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff_step: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    last_exit: int | None = None
    done: bool = False
    error: str = ""
    status: dict[str, Any] = field(default_factory=dict)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Shim:
    def __init__(self, spec: ShimSpec) -> None:
        self.spec = spec
        self.containers = [_Container(c) for c in spec.containers]
        self.stopping = False

    def _start(self, c: _Container) -> None:
        with Path(c.spec.log).open("ab") as log:
            try:
                c.proc = subprocess.Popen(
                    c.spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=c.spec.env,
                    cwd=c.spec.cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded process
                )
                c.started_at, c.error = time.monotonic(), ""
            except OSError as exc:
                c.error = f"failed to start {c.spec.argv[0]!r}: {exc.strerror or exc}"
                log.write(f"ambientmesh: {c.error}\n".encode())
                self._exited(c, 127)

    def _exited(self, c: _Container, code: int) -> None:
        c.proc, c.last_exit = None, code
        if self.stopping:
            return  # killed, not completed: `ambientctl up` must start it again
        if not should_restart(self.spec.restart_policy, code):
            c.done = True
            return
        ran_s = time.monotonic() - c.started_at
        c.backoff_step = 0 if ran_s >= BACKOFF_RESET_AFTER_S else c.backoff_step + 1
        c.restarts += 1
        c.next_start = time.monotonic() + restart_delay(c.backoff_step)

    def step(self) -> bool:
        """One supervision pass; returns True while anything is running or will restart."""
        now = time.monotonic()
        for c in self.containers:
            if c.proc is not None and (code := c.proc.poll()) is not None:
                self._exited(c, code)
            elif c.proc is None and not c.done and now >= c.next_start:
                self._start(c)
        self._write_status()
        return not all(c.done for c in self.containers)

    def stop(self) -> None:
        self.stopping = True
        for c in self.containers:
            if c.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.grace_s
        while any(c.proc and c.proc.poll() is None for c in self.containers):
            if time.monotonic() >= deadline:
                for c in self.containers:
                    if c.proc is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(c.proc.pid, signal.SIGKILL)
            time.sleep(POLL_S)
        for c in self.containers:
            if c.proc is not None:
                self._exited(c, c.proc.returncode)

    def _write_status(self) -> None:
        status = {
            c.spec.name: {
                "running": c.proc is not None,
                "pid": c.proc.pid if c.proc else None,
                "restarts": c.restarts,
                "lastExitCode": c.last_exit,
                "done": c.done,
                "error": c.error,
            }
            for c in self.containers
        }
        if status != getattr(self, "_last_status", None):
            self._last_status = status
            tmp = Path(self.spec.status_path + ".tmp")
            tmp.write_text(json.dumps({"shimPid": os.getpid(), "containers": status}))
            tmp.replace(self.spec.status_path)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while not self.stopping and self.step():
            time.sleep(POLL_S)
        self.stop()
        self._write_status()
        return 0


def _daemonize(pid_path: str) -> None:
    """Fork; the parent exits once the child has written its pid file (so callers can wait)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        ok = os.read(read_end, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(read_end)
    os.setsid()
    start_time = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    Path(pid_path).write_text(f"{os.getpid()} {start_time}\n")
    os.write(write_end, b"1")
    os.close(write_end)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    # The shim's own failures (a traceback) go next to its pid file, where `ambientctl` looks.
    log = os.open(Path(pid_path).with_name("shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m localcluster.shim SPEC.json", file=sys.stderr)
        return 2
    spec = ShimSpec.load(Path(argv[0]))
    _daemonize(spec.pid_path)
    return Shim(spec).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
