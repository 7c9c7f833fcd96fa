"""A soak (RELIABILITY, issue 25 §4): a local cluster under mixed load for N minutes, with policy
churn, pod churn and deliberate restarts, then what broke and what grew.

Load, from the meshed client pod on node1 to pods on node2:
- long streams: `STREAMS` connections at a time, each 60 s of numbered messages every 20 ms,
  every echo checked (samples.tcpecho);
- short requests: a new connection per HTTP GET, in batches of 20 (samples.client).
Churn: every `CYCLE_S`, an AuthorizationPolicy that allows the client is applied or deleted (it
must never deny the load) and a pod on node1 is created or deleted; every `RESTART_EVERY`
cycles ztunnel-node2 is restarted (`ambientctl restart`), then node1's node agent. Failures are
charged to a restart when they end within `RESTART_WINDOW_S` of one (a stream through the
restarted ztunnel is cut at its drain deadline: F-4(b), documented), else counted as failures.
Every `SAMPLE_S`: RSS and open fds of the controller, node1's ztunnel and node2's node agent
(never restarted: their slope is the leak signal). At the end: the cluster is removed and any
netns left over is reported.
Usage: scripts/soak [--minutes N] [--restart-every CYCLES]   (not in CI; last result: README)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from localcluster import naming, pods, teardown  # noqa: E402
from localcluster.cluster import Cluster  # noqa: E402

AMBIENTCTL = str(Path(sys.executable).parent / "ambientctl")
STREAMS = 4
CYCLE_S = 60.0
RESTART_EVERY = 5  # cycles
RESTART_WINDOW_S = 15.0
SAMPLE_S = 30.0
WATCHED = ("controller", "ztunnel-node1", "node-agent-node2")
POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: soak-allow, namespace: mesh}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
"""


def pod(name: str, node: str, command: list[str]) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: mesh}}\n"
        f"spec:\n  serviceAccountName: {name}\n  nodeName: {node}\n"
        f"  containers: [{{name: c, command: {command!r}}}]\n"
    )


@dataclass
class Tally:
    ok: int = 0
    failed: list[float] = field(default_factory=list)  # when each failure was seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, good: int, bad: int) -> None:
        with self.lock:
            self.ok += good
            self.failed += [time.monotonic()] * bad


# --- pure parts (tests/unit/test_soak.py) --------------------------------------------------------


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per hour; 0 with fewer than two."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 3600


def split_by_restarts(
    failures: list[float], restarts: list[float], window_s: float
) -> tuple[int, int]:
    """(failures within `window_s` after a restart began, the others)."""
    during = sum(any(0 <= f - r <= window_s for r in restarts) for f in failures)
    return during, len(failures) - during


# --- the run -------------------------------------------------------------------------------------


def ctl(cluster: str, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [AMBIENTCTL, *args, "--cluster", cluster],
        input=stdin,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ambientctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def in_pod(cluster: str, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AMBIENTCTL, "exec", "mesh/client", "--cluster", cluster, "--", *command],
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def streams(cluster: str, ip: str, tally: Tally, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            run = in_pod(
                cluster, ["python3", "-m", "samples.tcpecho", "stream", ip, "9000", "60", "20"], 120
            )
            good = run.returncode == 0 and run.stdout.startswith("OK")
        except subprocess.TimeoutExpired:
            good = False
        tally.add(int(good), int(not good))


def requests(cluster: str, ip: str, tally: Tally, stop: threading.Event) -> None:
    urls = [f"http://{ip}:8080/"] * 20
    while not stop.is_set():
        try:
            run = in_pod(cluster, ["python3", "-m", "samples.client", "--timeout", "5", *urls], 180)
            lines = run.stdout.splitlines()
        except subprocess.TimeoutExpired:
            lines = []
        good = sum(line.startswith("OK") for line in lines)
        tally.add(good, len(urls) - good)


def usage(cluster: Cluster, name: str) -> tuple[float, float] | None:
    """(RSS MiB, open fds) of a system component's process, None if it is not running."""
    pid = pods.container_pid(cluster.store.system_dir(name), name)
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        return rss_kib / 1024, float(len(list(Path(f"/proc/{pid}/fd").iterdir())))
    except (OSError, StopIteration):
        return None


@dataclass
class Soak:
    name: str
    streams: Tally = field(default_factory=Tally)
    requests: Tally = field(default_factory=Tally)
    restarts: list[float] = field(default_factory=list)
    samples: dict[str, list[tuple[float, tuple[float, float]]]] = field(
        default_factory=lambda: {w: [] for w in WATCHED}
    )
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)
    restart_every: int = RESTART_EVERY

    def setup(self) -> dict[str, str]:
        ctl(self.name, "up")
        ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh}\n"
        ctl(self.name, "apply", "-f", "-", stdin=ns)
        ctl(self.name, "label", "namespace", "mesh", "istio.io/dataplane-mode=ambient")
        docs = [
            pod("client", "node1", ["sleep", "infinity"]),
            pod("server", "node2", ["python3", "-m", "samples.echo", "8080"]),
            pod("stream", "node2", ["python3", "-m", "samples.tcpecho", "serve", "9000"]),
        ]
        ctl(self.name, "apply", "-f", "-", stdin="---\n".join(docs))
        time.sleep(3)
        listed = json.loads(ctl(self.name, "get", "pods", "-n", "mesh", "-o", "json"))["items"]
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in listed}

    def start_load(self, ips: dict[str, str]) -> None:
        for _ in range(STREAMS):
            args = (self.name, ips["stream"], self.streams, self.stop)
            self.workers.append(threading.Thread(target=streams, args=args))
        args = (self.name, ips["server"], self.requests, self.stop)
        self.workers.append(threading.Thread(target=requests, args=args))
        for worker in self.workers:
            worker.start()

    def stop_load(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=200)

    def sample(self, at: float) -> None:
        cluster = Cluster(self.name)
        for watched in WATCHED:
            if (u := usage(cluster, watched)) is not None:
                self.samples[watched].append((at, u))

    def churn(self, cycle: int) -> None:
        if cycle % 2:
            ctl(self.name, "apply", "-f", "-", stdin=POLICY)
            ctl(self.name, "apply", "-f", "-", stdin=pod("churn", "node1", ["sleep", "infinity"]))
        else:
            ctl(self.name, "delete", "AuthorizationPolicy", "soak-allow", "-n", "mesh")
            ctl(self.name, "delete", "Pod", "churn", "-n", "mesh")
        if cycle % self.restart_every == 0:
            self.restarts.append(time.monotonic())
            ctl(self.name, "restart", "ztunnel-node2", timeout=180)
            ctl(self.name, "restart", "node-agent-node1", timeout=180)

    def progress(self, minutes: int) -> str:
        return (
            f"soak: {minutes} min, streams {self.streams.ok} ok / {len(self.streams.failed)} "
            f"failed, requests {self.requests.ok} ok / {len(self.requests.failed)} failed"
        )

    def run(self, seconds: float) -> None:
        start = time.monotonic()
        cycle, next_cycle, next_sample = 0, start + CYCLE_S, start
        while (now := time.monotonic()) < start + seconds:
            if now >= next_sample:
                self.sample(now - start)
                next_sample += SAMPLE_S
            if now >= next_cycle:
                cycle += 1
                next_cycle += CYCLE_S
                self.churn(cycle)
                print(self.progress(int((time.monotonic() - start) / 60)), flush=True)
            time.sleep(0.5)

    def report(self, left: list[str], minutes: float) -> None:
        print(
            f"\nsoak result ({minutes:g} min, {len(self.restarts)} restarts of ztunnel-node2 "
            "and node-agent-node1)"
        )
        for what, tally in (("streams (60 s each)", self.streams), ("requests", self.requests)):
            during, outside = split_by_restarts(tally.failed, self.restarts, RESTART_WINDOW_S)
            print(f"  {what}: {tally.ok} ok, {outside} failed outside restarts, {during} during")
        for watched, series in self.samples.items():
            if not series:
                print(f"  {watched}: no samples")
                continue
            rss = [(t, u[0]) for t, u in series]
            fds = [(t, u[1]) for t, u in series]
            print(
                f"  {watched}: RSS {rss[0][1]:.1f} -> {rss[-1][1]:.1f} MiB "
                f"(slope {slope_per_hour(rss):+.2f} MiB/h), fds {fds[0][1]:.0f} -> "
                f"{fds[-1][1]:.0f} (slope {slope_per_hour(fds):+.2f}/h), {len(series)} samples"
            )
        print(f"  left over after down: {left or 'nothing'}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--restart-every", type=int, default=RESTART_EVERY, help="cycles")
    args = parser.parse_args()
    os.environ[naming.STATE_DIR_ENV] = tempfile.mkdtemp(prefix="soak-state-")
    soak = Soak(f"soak{os.urandom(2).hex()}", restart_every=args.restart_every)
    print(f"soak: cluster {soak.name}, {args.minutes:g} min", flush=True)
    try:
        ips = soak.setup()
        print(f"soak: pods {ips}", flush=True)
        soak.start_load(ips)
        soak.run(args.minutes * 60)
        soak.stop_load()
    finally:
        soak.stop.set()
        teardown.down(soak.name)
    soak.report([f"netns {n}" for n in teardown.cluster_netns(soak.name)], args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
