"""The benchmark run behind `scripts/bench`: one local cluster, three paths, every row side by side.

Paths (PERF.md "Topology"): a client pod on node1 and a server pod on node2 —
  direct:  pods in a namespace that is not enrolled, plain TCP across the underlay;
  stunnel: the same direct pods, through an stunnel4 mTLS pair (TLS 1.3, ECDSA P-256) running in
           the same pods' netns (so it crosses the same veths and underlay);
  mesh:    pods in an enrolled namespace: eBPF → ztunnel → HBONE/mTLS → ztunnel.
Rows: single-stream throughput (iperf3; also through our raw mTLS relay pair, in the pods and
where the ztunnels run), 1 KiB round trips (p50/p90/p99, unpinned and pinned to one CPU), new
connections per second (one loop; four parallel loops, also per proxy core-second), proxy CPU
during the stream, RSS per open connection; the eBPF redirect alone; HBONE framing and a pool
dial's handshake in process; and L7: HTTP/1.1 requests per proxy core-second (wrk, 32
connections) through haproxy (no policy; client pod → haproxy → nginx) and through the waypoint
(an L7 policy evaluated on every request; client → ztunnel → waypoint → ztunnel → nginx), with
wrk's latency percentiles. Each row runs `reps` times; the report gives medians and the min-max
spread, and ratios computed within this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import framing  # noqa: E402 - scripts/framing.py
import handshake  # noqa: E402 - scripts/handshake.py

from api.spiffe import SpiffeId  # noqa: E402
from controller.ca import authority  # noqa: E402
from localcluster import naming, pods, teardown  # noqa: E402
from localcluster.cluster import Cluster  # noqa: E402
from localcluster.topology import NodePlan  # noqa: E402

AMBIENTCTL = str(Path(sys.executable).parent / "ambientctl")
PACKAGES = ("stunnel4", "iperf3", "haproxy", "nginx-light", "wrk")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sh(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, cwd=REPO)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def ensure_packages() -> None:
    missing = [
        p
        for p in PACKAGES
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        ).stdout
        != "install ok installed"
    ]
    if missing:
        print(f"installing {' '.join(missing)}", flush=True)
        sh("apt-get", "install", "-y", "-qq", *missing)


class Bench:
    def __init__(self, reps: int, quick: bool) -> None:
        self.reps, self.quick = reps, quick
        self.cluster = f"bench{os.urandom(3).hex()}"
        self.tmp = Path(tempfile.mkdtemp(prefix="ambientmesh-bench-"))
        self.ip: dict[str, str] = {}
        # Relays of ours in the ztunnels' netns, by path; ended by PID at teardown.
        self.helpers: dict[str, list[subprocess.Popen[bytes]]] = {"splice": [], "relay_zt": []}

    def ctl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return sh(AMBIENTCTL, *args, "--cluster", self.cluster, stdin=stdin, check=check)

    def in_pod(self, pod: str) -> list[str]:
        """The prefix that runs a command in a pod's netns, as `ambientctl exec` does, without
        starting ambientctl each time (a measurement's set-up is ~80 of them in a run)."""
        namespace, name = pod.split("/")
        netns = naming.NETNS_DIR / naming.pod_netns(self.cluster, namespace, name)
        return ["nsenter", f"--net={netns}", "--"]

    def exec(self, pod: str, *command: str, check: bool = True) -> str:
        return sh(*self.in_pod(pod), *command, check=check)

    # --- set-up ---------------------------------------------------------------------------------

    def pki(self) -> None:
        now = datetime.now(UTC)
        root, key = authority.generate_root("bench", now)
        material = authority.CaMaterial(root, key, (root,), (root,))
        (self.tmp / "ca.pem").write_text(authority.pem(root))
        for name in ("server", "client"):
            leaf_key = authority.new_key()
            leaf = authority.sign_leaf(
                material,
                leaf_key.public_key(),
                SpiffeId("bench", "stunnel", name),
                timedelta(days=1),
                now,
            )
            (self.tmp / f"{name}.pem").write_text(authority.pem(leaf))
            (self.tmp / f"{name}.key").write_bytes(authority.key_pem(leaf_key))

    def stunnel_conf(self, role: str, services: dict[str, tuple[str, str]]) -> Path:
        lines = ["foreground = yes", "pid =", "debug = 3"]
        if role == "client":
            lines.append("client = yes")
        for name, (accept, connect) in services.items():
            lines += [
                f"[{name}]",
                f"accept = {accept}",
                f"connect = {connect}",
                f"cert = {self.tmp / (role + '.pem')}",
                f"key = {self.tmp / (role + '.key')}",
                f"CAfile = {self.tmp / 'ca.pem'}",
                "verifyChain = yes",
                "sslVersionMin = TLSv1.3",
                "curves = prime256v1",
            ]
            if role == "server":
                lines.append("requireCert = yes")
        path = self.tmp / f"stunnel-{role}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def nginx(self, name: str) -> list[str]:
        """An HTTP/1.1 backend that costs the proxies' comparison nothing (one process)."""
        conf = self.tmp / f"nginx-{name}.conf"
        conf.write_text(
            "daemon off; master_process off; worker_processes 1; error_log stderr;\n"
            f"pid {self.tmp}/nginx-{name}.pid;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; server { listen 8080; "
            'location / { return 200 "ok\\n"; } } }\n'
        )
        return ["nginx", "-c", str(conf)]

    def haproxy(self, backend: str) -> list[str]:
        conf = self.tmp / "haproxy.cfg"
        conf.write_text(
            "global\n  nbthread 1\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n"
            "frontend fe\n  bind 127.0.0.1:18080\n  default_backend be\n"
            f"backend be\n  server s1 {backend}:8080\n"
        )
        return ["haproxy", "-db", "-f", str(conf)]

    def relay(self, role: str, listen: str, target: str) -> list[str]:
        pki = [
            str(self.tmp / f"{role}.pem"),
            str(self.tmp / f"{role}.key"),
            str(self.tmp / "ca.pem"),
        ]
        return ["python3", "-m", "samples.tlsrelay", role, listen, target, *pki]

    @staticmethod
    def pod(name: str, ns: str, node: str, containers: dict[str, list[str]]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "nodeName": node,
                "serviceAccountName": name,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": c, "command": cmd} for c, cmd in containers.items()],
            },
        }

    def apply(self, *docs: dict[str, Any]) -> None:
        self.ctl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))

    def setup(self) -> None:
        print(f"cluster {self.cluster}: building", flush=True)
        self.ctl("up", "--nodes", "2")
        ns = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
            for n in ("bdirect", "bmesh")
        ]
        self.apply(*ns)
        self.ctl("label", "namespace", "bmesh", "istio.io/dataplane-mode=ambient")
        self.pki()
        servers = {
            "iperf": ["iperf3", "-s", "-p", "5201"],
            "pingpong": ["python3", "-m", "samples.pingpong", "serve", "9000"],
        }
        srv_conf = self.stunnel_conf(
            "server", {"iperf": ("5443", "127.0.0.1:5201"), "pp": ("9443", "127.0.0.1:9000")}
        )
        self.apply(
            self.pod(
                "srv",
                "bdirect",
                "node2",
                {
                    **servers,
                    "stunnel": ["stunnel4", str(srv_conf)],
                    "relay": self.relay("server", "6443", "127.0.0.1:5201"),
                    "nginx": self.nginx("direct"),
                },
            ),
            self.pod("srv", "bmesh", "node2", servers),
        )
        pods = json.loads(self.ctl("get", "pods", "-A", "-o", "json"))["items"]
        self.ip = {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"]["podIP"]
            for p in pods
        }
        direct = self.ip["bdirect/srv"]
        cli_conf = self.stunnel_conf(
            "client",
            {
                "iperf": ("127.0.0.1:15201", f"{direct}:5443"),
                "pp": ("127.0.0.1:19000", f"{direct}:9443"),
            },
        )
        sleep = {"main": ["sleep", "infinity"]}
        self.apply(
            self.pod(
                "cli",
                "bdirect",
                "node1",
                {
                    **sleep,
                    "stunnel": ["stunnel4", str(cli_conf)],
                    "relay": self.relay("client", "25201", f"{direct}:6443"),
                    "haproxy": self.haproxy(direct),
                },
            ),
            self.pod("cli", "bmesh", "node1", sleep),
        )
        for pod in ("bdirect/cli", "bmesh/cli"):
            # The direct connection-rate loop opens thousands of connections a second, each
            # leaving a port in TIME_WAIT for 60 s: widen the range or the loop runs out.
            self.exec(pod, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535")
        self.ztunnel_relays()
        for path, (pod, host, port) in self.paths("9000", "19000").items():
            if path != "relay":  # iperf only; up long before the throughput rows
                self.wait_serving(pod, host, port, path)
        self.l7_setup()

    def in_ztunnel_netns(self, path: str, node: NodePlan, argv: list[str], log: str) -> None:
        """Starts one of our relays in a node's ztunnel netns (where ztunnel runs)."""
        netns = naming.ztunnel_netns(self.cluster, node.name)
        self.helpers[path].append(
            subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{netns}", sys.executable, *argv],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=(self.tmp / log).open("wb"),
            )
        )

    def ztunnel_relays(self) -> None:
        """Yardsticks placed where the ztunnels run, so that they cross the same veths.
        The eBPF row's: ztunnel's passthrough code as a plain relay in node1's ztunnel netns
        (samples.splicerelay), addressed directly by the pod that is not enrolled, for iperf
        (16001) and the round trips (16002). The framing and latency rows': our raw mTLS relay
        pair in the two ztunnel netns, for iperf (25202) and the round trips (29000)."""
        node1, node2 = Cluster(self.cluster).nodes()[:2]
        self.ip["ztunnel-node1"] = node1.ztunnel_ip
        srv = self.ip["bdirect/srv"]
        for port, target in (("16001", "5201"), ("16002", "9000")):
            argv = ["-m", "samples.splicerelay", f"{node1.ztunnel_ip}:{port}", f"{srv}:{target}"]
            self.in_ztunnel_netns("splice", node1, argv, f"splicerelay-{port}.log")
        for listen, tls_port, target in (("25202", "6444", "5201"), ("29000", "6445", "9000")):
            server = self.relay("server", f"{node2.ztunnel_ip}:{tls_port}", f"{srv}:{target}")
            client = self.relay(
                "client", f"{node1.ztunnel_ip}:{listen}", f"{node2.ztunnel_ip}:{tls_port}"
            )
            self.in_ztunnel_netns("relay_zt", node2, server[1:], f"tlsrelay-server-{target}.log")
            self.in_ztunnel_netns("relay_zt", node1, client[1:], f"tlsrelay-client-{target}.log")

    def l7_setup(self) -> None:
        """The waypoint's row: a `web` pod (nginx) behind a Service that uses the namespace's
        waypoint, and an L7 policy bound to that Service (so every request is judged)."""
        web = self.pod("web", "bmesh", "node2", {"nginx": self.nginx("mesh")})
        web["metadata"]["labels"] = {"app": "web"}
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web",
                "namespace": "bmesh",
                "labels": {"istio.io/use-waypoint": "waypoint"},
            },
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]},
        }
        policy = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "web-get", "namespace": "bmesh"},
            "spec": {
                "targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
                "rules": [
                    {
                        "from": [{"source": {"principals": ["cluster.local/ns/bmesh/sa/cli"]}}],
                        "to": [{"operation": {"methods": ["GET"], "paths": ["/*"]}}],
                    }
                ],
            },
        }
        self.apply(web, service, policy)
        self.ctl("waypoint", "apply", "-n", "bmesh")
        svc = json.loads(self.ctl("get", "service", "web", "-n", "bmesh", "-o", "json"))
        self.ip["bmesh/web-vip"] = svc["spec"]["clusterIP"]

    def paths(self, port: str, stunnel_port: str) -> dict[str, tuple[str, str, str]]:
        return {
            "direct": ("bdirect/cli", self.ip["bdirect/srv"], port),
            "stunnel": ("bdirect/cli", "127.0.0.1", stunnel_port),
            "mesh": ("bmesh/cli", self.ip["bmesh/srv"], port),
            # Our own raw mTLS relay pair: the yardstick for HBONE's framing cost, in the pods
            # (loopback legs, as stunnel; iperf only) and where the ztunnels run (veth legs;
            # iperf and the round trips: what the same Python TLS plumbing adds without HTTP/2).
            "relay": ("bdirect/cli", "127.0.0.1", "25201"),
            "relay_zt": (
                "bdirect/cli",
                self.ip["ztunnel-node1"],
                {"5201": "25202", "9000": "29000"}[port],
            ),
            # One plaintext relay, ztunnel's passthrough code, in node1's ztunnel netns:
            # reached by the eBPF redirect (an enrolled pod to a pod outside the mesh) ...
            "passthrough": ("bmesh/cli", self.ip["bdirect/srv"], port),
            # ... and addressed directly by a pod that is not enrolled (no redirect).
            "splice": (
                "bdirect/cli",
                self.ip["ztunnel-node1"],
                {"5201": "16001", "9000": "16002"}[port],
            ),
        }

    def pingpong(self, pod: str, *args: str, check: bool = True) -> str:
        """`samples.pingpong` run inside a pod (the load generator of every latency row)."""
        return self.exec(pod, "python3", "-m", "samples.pingpong", *args, check=check)

    def wait_serving(self, pod: str, host: str, port: str, path: str) -> None:
        for _ in range(100):
            out = self.pingpong(pod, "rtt", host, port, "10", check=False)
            if out.startswith("{"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{path} path never answered")

    # --- measurements ---------------------------------------------------------------------------

    def pids(self, path: str) -> list[int]:
        """Processes doing the proxying on a path (none for direct)."""
        store = Cluster(self.cluster).store
        if path == "mesh":
            dirs = [store.system_dir(f"ztunnel-node{i}") for i in (1, 2)]
            names = [f"ztunnel-node{i}" for i in (1, 2)]
        elif path == "waypoint":
            dirs, names = [store.pod_dir("bmesh", "waypoint")], ["istio-proxy"]
        elif path == "haproxy":
            dirs, names = [store.pod_dir("bdirect", "cli")], ["haproxy"]
        elif path == "passthrough":
            dirs, names = [store.system_dir("ztunnel-node1")], ["ztunnel-node1"]
        elif path in self.helpers:
            return [p.pid for p in self.helpers[path]]
        elif path in {"stunnel", "relay"}:
            dirs = [store.pod_dir("bdirect", "cli"), store.pod_dir("bdirect", "srv")]
            names = [path, path]
        else:
            return []
        pids = [pods.container_pid(d, n) for d, n in zip(dirs, names, strict=True)]
        if None in pids:
            raise RuntimeError(f"{path}: a proxy process is not running")
        return [pid for pid in pids if pid is not None]

    @staticmethod
    def cpu_s(pids: list[int]) -> float:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    @staticmethod
    def rss_kib(pids: list[int]) -> int:
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def throughput(self, path: str) -> dict[str, float]:
        return self.ebpf_during(path) if path == "mesh" else self.stream(path)

    def stream(self, path: str, *, split: bool = False) -> dict[str, float]:
        """One iperf3 stream. `split`: with the chain split across the two CPUs, the client
        and the first proxy on CPU 0, the second proxy and the server on CPU 1 (left to the
        scheduler, our relay pair's throughput swings by a third from run to run)."""
        pod, host, port = self.paths("5201", "15201")[path]
        pids, prefix = self.pids(path), []
        saved: dict[int, set[int]] = {}
        if split:
            pids, saved = self._split(path)
            prefix = ["taskset", "-c", "0"]
        seconds = (1 if split else 2) if self.quick else 8
        try:
            cpu0 = self.cpu_s(pids)
            argv = [*prefix, "iperf3", "-c", host, "-p", port, "-t", str(seconds), "-J"]
            out = json.loads(self.exec(pod, *argv))
            cpu = (self.cpu_s(pids) - cpu0) / seconds
        finally:
            unpin(saved)
        return {"gbit_s": out["end"]["sum_received"]["bits_per_second"] / 1e9, "proxy_cores": cpu}

    def _split(self, path: str) -> tuple[list[int], dict[int, set[int]]]:
        """Pins a path's two proxies and its iperf3 server for `stream(split=True)`; returns
        the proxies and what `unpin` restores."""
        proxies = self.pids(path)
        # The relay pairs' iperf pair is started first, its server side before its client.
        sender, receiver = (proxies[1], proxies[0]) if path == "relay_zt" else proxies[:2]
        ns = "bmesh" if path == "mesh" else "bdirect"
        server = pods.container_pid(Cluster(self.cluster).store.pod_dir(ns, "srv"), "iperf")
        if server is None:
            raise RuntimeError(f"{ns}/srv: the iperf3 server is not running")
        return [sender, receiver], {**pin([sender], {0}), **pin([receiver, server], {1})}

    def latency(self, path: str) -> dict[str, float]:
        pod, host, port = self.paths("9000", "19000")[path]
        count = "1000" if self.quick else "5000"
        result: dict[str, float] = json.loads(self.pingpong(pod, "rtt", host, port, count))
        return result

    def latency_pinned(self, path: str) -> dict[str, float]:
        """The same round trips with the whole chain (client, proxies, server) on CPU 0:
        wake-ups across this guest's two vCPUs cost ~100 µs (PERF.md) and hide the proxies'
        own cost. Every thread's affinity is restored afterwards."""
        pod, host, port = self.paths("9000", "19000")[path]
        ns, name = ("bdirect" if path != "mesh" else "bmesh"), "srv"
        server = pods.container_pid(Cluster(self.cluster).store.pod_dir(ns, name), "pingpong")
        if server is None:
            raise RuntimeError(f"{ns}/{name}: the round-trip server is not running")
        saved = pin([*self.pids(path), server], {0})
        try:
            count = "1000" if self.quick else "5000"
            out = self.exec(
                pod, "taskset", "-c", "0", "python3", "-m", "samples.pingpong", "rtt", host, port,
                count,
            )  # fmt: skip
        finally:
            unpin(saved)
        result: dict[str, float] = json.loads(out)
        return result

    def connrate(self, path: str) -> dict[str, float]:
        """New connections: one loop (the latency of a connection set-up) and four parallel
        loops with the proxies' CPU, so that per proxy core-second compares what each path
        spends per connection (PERF.md measured stunnel as ~300 per server core-second)."""
        pod, host, port = self.paths("9000", "19000")[path]
        seconds = "1" if self.quick else "5"

        def run(workers: str) -> dict[str, float]:
            result: dict[str, float] = json.loads(
                self.pingpong(pod, "connrate", host, port, seconds, workers)
            )
            return result

        serial = run("1")
        if path == "direct":  # a reference for the one-loop row only (and its ports)
            return {"conns_per_s": serial["conns_per_s"]}
        pids = self.pids(path)
        cpu0 = self.cpu_s(pids)
        parallel = run("4")
        cores_s = self.cpu_s(pids) - cpu0
        per_core = parallel["count"] / cores_s if cores_s else 0.0
        return {
            "conns_per_s": serial["conns_per_s"],
            "parallel_conns_per_s": parallel["conns_per_s"],
            "conns_per_proxy_core_s": per_core,
        }

    def memory(self, path: str) -> dict[str, float]:
        pod, host, port = self.paths("9000", "19000")[path]
        n = 200 if self.quick else 500
        pids = self.pids(path)
        before = self.rss_kib(pids)
        proc = subprocess.Popen(
            [
                *self.in_pod(pod),
                "python3",
                "-m",
                "samples.pingpong",
                "hold",
                host,
                port,
                str(n),
                "60",  # held until measured, then ended
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # {"held": n}
        time.sleep(1)
        during = self.rss_kib(pids)
        proc.terminate()
        proc.wait(30)
        # Per proxy process: mesh and stunnel both put one process at each end.
        return {
            "kib_per_conn_per_proxy": (during - before) / n / max(len(pids), 1),
            "connections": n,
        }

    def redirect(self, path: str) -> dict[str, float]:
        """One plaintext relay with and without the eBPF redirect in front: stream and round
        trips (PERF.md "eBPF redirect cost")."""
        result = self.stream(path)
        result.update(self.latency_pinned(path))  # unpinned, cross-CPU wake-ups drown it
        return result

    def ebpf_during(self, path: str) -> dict[str, float]:
        """The mesh stream, and what the datapath's eBPF programs themselves cost meanwhile: the
        kernel counts each program's runs and run time while `kernel.bpf_stats_enabled` is on
        (switched back afterwards). Read from the node agents' program fds (fdinfo)."""
        knob = Path("/proc/sys/kernel/bpf_stats_enabled")
        setting = knob.read_text().strip()
        knob.write_text("1")
        try:
            infos = self.bpf_programs()
            ns0, runs0 = bpf_counters(infos)
            started = time.monotonic()
            result = self.stream(path)
            seconds = time.monotonic() - started
            ns, runs = (a - b for a, b in zip(bpf_counters(infos), (ns0, runs0), strict=True))
        finally:
            knob.write_text(setting)
        result.update(
            runs_per_s=runs / seconds,
            ns_per_run=ns / runs if runs else 0.0,
            bpf_cores=ns / 1e9 / seconds,
        )
        return result

    def bpf_programs(self) -> list[Path]:
        """fdinfo of every eBPF program the two node agents hold (pod_out, pod_in, zt_in)."""
        store = Cluster(self.cluster).store
        infos = []
        for node in ("node1", "node2"):
            name = f"node-agent-{node}"
            pid = pods.container_pid(store.system_dir(name), name)
            if pid is None:
                raise RuntimeError(f"{name} is not running")
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) == "anon_inode:bpf-prog":
                        infos.append(Path(f"/proc/{pid}/fdinfo/{fd.name}"))
        if not infos:
            raise RuntimeError("no eBPF program found in the node agents")
        return infos

    def http(self, path: str) -> dict[str, float]:
        """wrk through one L7 proxy: requests/s, per proxy core-second, latency percentiles."""
        pod, url = {
            "haproxy": ("bdirect/cli", "http://127.0.0.1:18080/"),
            "waypoint": ("bmesh/cli", f"http://{self.ip['bmesh/web-vip']}:8080/"),
        }[path]
        seconds = "2" if self.quick else "6"
        pids = self.pids(path)
        cpu0 = self.cpu_s(pids)
        out = self.exec(pod, "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", url)
        cores_s = self.cpu_s(pids) - cpu0
        result = parse_wrk(out)
        result["req_per_proxy_core_s"] = result["requests"] / cores_s if cores_s else 0.0
        return result

    # --- run --------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        rows: dict[str, dict[str, list[dict[str, float]]]] = {}
        for name, measure in (
            ("throughput", self.throughput),
            ("throughput_split", lambda path: self.stream(path, split=True)),
            ("latency", self.latency),
            ("latency_pinned", self.latency_pinned),
            ("connrate", self.connrate),
            ("memory", self.memory),
            ("http", self.http),
            ("redirect", self.redirect),
            ("framing", lambda _: framing.measure(self.tmp)),
            ("handshake", lambda _: handshake.measure(self.tmp)),
        ):
            rows[name] = {}
            for rep in range(self.reps):
                for path in ROW_PATHS[name]:  # interleaved: the same noise for every path
                    result = measure(path)
                    rows[name].setdefault(path, []).append(result)
                    print(f"  {name:10} rep {rep + 1} {path:8} {json.dumps(result)}", flush=True)
        return rows

    def teardown(self) -> None:
        processes = [p for started in self.helpers.values() for p in started]
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        teardown.down(self.cluster)
        shutil.rmtree(self.tmp, ignore_errors=True)


ROW_PATHS = {
    "throughput": ("direct", "stunnel", "relay", "relay_zt", "mesh"),
    "throughput_split": ("stunnel", "relay_zt", "mesh"),
    "latency": ("direct", "stunnel", "relay_zt", "mesh"),
    "latency_pinned": ("direct", "stunnel", "relay_zt", "mesh"),
    "connrate": ("direct", "stunnel", "mesh"),
    "memory": ("stunnel", "mesh"),
    "http": ("haproxy", "waypoint"),
    "redirect": ("splice", "passthrough"),
    "framing": ("hbone",),  # in process: no path
    "handshake": ("tls",),  # in process: no path
}
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def pin(pids: list[int], cpus: set[int]) -> dict[int, set[int]]:
    """Moves every thread of `pids` to `cpus`; returns each thread's former CPUs."""
    saved = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            tid = int(task.name)
            with contextlib.suppress(OSError):  # a thread that just ended
                saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
    return saved


def unpin(saved: dict[int, set[int]]) -> None:
    """Gives every thread `pin` moved its former CPUs back."""
    for tid, cpus in saved.items():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


def bpf_counters(infos: list[Path]) -> tuple[int, int]:
    """(run time in ns, runs) summed over programs, from their fdinfo."""
    ns = runs = 0
    for info in infos:
        fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        ns += int(fields.get("run_time_ns", "0"))
        runs += int(fields.get("run_cnt", "0"))
    return ns, runs


def parse_wrk(out: str) -> dict[str, float]:
    """Requests, requests/s and the p50/p99 latency (ms) of `wrk --latency` output."""
    result: dict[str, float] = {}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["req_per_s"] = float(words[1])
        elif len(words) >= 4 and words[1] == "requests" and words[2] == "in":
            result["requests"] = float(words[0])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            number = words[1].rstrip("usm")
            unit = words[1][len(number) :]
            result[f"p{words[0][:-1]}_ms"] = float(number) * _UNITS_MS[unit]
    if "requests" not in result or "req_per_s" not in result:
        raise RuntimeError(f"wrk output not understood: {out[:300]!r}")
    return result


def median(rows: list[dict[str, float]], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in rows]
    return statistics.median(values), min(values), max(values)


def report(rows: dict[str, Any], meta: dict[str, Any]) -> str:
    def m(row: str, path: str, key: str) -> tuple[float, float, float]:
        return median(rows[row][path], key)

    def fmt(v: tuple[float, float, float], digits: int = 2) -> str:
        return f"{v[0]:.{digits}f} ({v[1]:.{digits}f}-{v[2]:.{digits}f})"

    tp = {p: m("throughput", p, "gbit_s") for p in ("direct", "stunnel", "mesh")}
    relay = m("throughput", "relay", "gbit_s")
    relay_zt = m("throughput", "relay_zt", "gbit_s")
    split = {p: m("throughput_split", p, "gbit_s") for p in ("stunnel", "relay_zt", "mesh")}
    cpu = {p: m("throughput", p, "proxy_cores") for p in ("stunnel", "mesh")}
    lat_paths = (*tp, "relay_zt")
    lat = {p: {q: m("latency", p, f"{q}_us") for q in ("p50", "p99")} for p in lat_paths}
    pinned = {p: {q: m("latency_pinned", p, f"{q}_us") for q in ("p50", "p99")} for p in lat_paths}
    cr = {p: m("connrate", p, "conns_per_s") for p in tp}
    crp = {p: m("connrate", p, "parallel_conns_per_s") for p in ("stunnel", "mesh")}
    crc = {p: m("connrate", p, "conns_per_proxy_core_s") for p in ("stunnel", "mesh")}
    # The first repetition is the cold one: later ones reuse memory the allocator kept.
    mem = {
        p: (
            rows["memory"][p][0]["kib_per_conn_per_proxy"],
            *median(rows["memory"][p], "kib_per_conn_per_proxy")[1:],
        )
        for p in ("stunnel", "mesh")
    }
    added = {
        p: {q: lat[p][q][0] - lat["direct"][q][0] for q in ("p50", "p99")}
        for p in ("stunnel", "relay_zt", "mesh")
    }
    added_pinned = {
        p: {q: pinned[p][q][0] - pinned["direct"][q][0] for q in ("p50", "p99")}
        for p in ("stunnel", "relay_zt", "mesh")
    }
    http = {
        p: {k: m("http", p, k) for k in ("req_per_s", "req_per_proxy_core_s", "p50_ms", "p99_ms")}
        for p in ("haproxy", "waypoint")
    }
    rd = {
        p: {k: m("redirect", p, k) for k in ("gbit_s", "p50_us", "p99_us")}
        for p in ("splice", "passthrough")
    }
    ebpf = {k: m("throughput", "mesh", k) for k in ("bpf_cores", "ns_per_run", "runs_per_s")}
    ebpf_share = ebpf["bpf_cores"][0] / cpu["mesh"][0]
    fr = {
        k: m("framing", "hbone", k)
        for k in ("send_us_per_mib", "receive_us_per_mib", "tls_us_per_mib", "framing_share")
    }
    hs = {k: m("handshake", "tls", k) for k in ("full_ms", "resumed_ms")}
    per_core = (
        http["waypoint"]["req_per_proxy_core_s"][0] / http["haproxy"]["req_per_proxy_core_s"][0]
    )
    lines = [
        f"# ambientmesh benchmark — {meta['date']}",
        "",
        f"{meta['reps']} repetitions, interleaved; median (min-max). Machine: {meta['machine']}.",
        "",
        "| row | direct | stunnel pair | mesh (HBONE) | mesh ratio | target |",
        "|---|---|---|---|---|---|",
        f"| throughput, 1 stream (Gbit/s) | {fmt(tp['direct'])} | {fmt(tp['stunnel'])} | "
        f"{fmt(tp['mesh'])} | {tp['mesh'][0] / tp['stunnel'][0]:.2f}x stunnel, "
        f"{tp['mesh'][0] / tp['direct'][0]:.2f}x direct | ≥ 1.5x stunnel, ≥ 0.35x direct |",
        f"| HBONE framing cost: throughput vs our own raw mTLS relay pair where the ztunnels "
        f"run ({fmt(relay_zt)} Gbit/s); in the pods ({fmt(relay)}) | | | | "
        f"{tp['mesh'][0] / relay_zt[0]:.2f}x the relay; {tp['mesh'][0] / relay[0]:.2f}x | "
        "≥ 0.8x the relay |",
        f"| the same, the chain split across the two CPUs (sender side on one, receiver side on "
        f"the other): our relay pair {fmt(split['relay_zt'])} Gbit/s | | "
        f"{fmt(split['stunnel'])} | {fmt(split['mesh'])} | "
        f"{split['mesh'][0] / split['relay_zt'][0]:.2f}x the relay; "
        f"{split['mesh'][0] / split['stunnel'][0]:.2f}x stunnel | ≥ 0.8x the relay |",
        f"| proxy CPU during the stream (cores, both ends) | - | {fmt(cpu['stunnel'])} | "
        f"{fmt(cpu['mesh'])} | | |",
        f"| 1 KiB RTT p50 (µs) | {fmt(lat['direct']['p50'], 0)} | "
        f"{fmt(lat['stunnel']['p50'], 0)} | {fmt(lat['mesh']['p50'], 0)} | added "
        f"{added['mesh']['p50']:.0f} µs vs stunnel's {added['stunnel']['p50']:.0f} µs "
        "| ≤ stunnel's |",
        f"| 1 KiB RTT p99 (µs) | {fmt(lat['direct']['p99'], 0)} | "
        f"{fmt(lat['stunnel']['p99'], 0)} | {fmt(lat['mesh']['p99'], 0)} | added "
        f"{added['mesh']['p99']:.0f} µs vs stunnel's {added['stunnel']['p99']:.0f} µs "
        "| ≤ stunnel's |",
        f"| 1 KiB RTT p50, chain pinned to one CPU (µs) | {fmt(pinned['direct']['p50'], 0)} | "
        f"{fmt(pinned['stunnel']['p50'], 0)} | {fmt(pinned['mesh']['p50'], 0)} | added "
        f"{added_pinned['mesh']['p50']:.0f} µs vs stunnel's "
        f"{added_pinned['stunnel']['p50']:.0f} µs | ≤ stunnel's |",
        f"| 1 KiB RTT p99, chain pinned to one CPU (µs) | {fmt(pinned['direct']['p99'], 0)} | "
        f"{fmt(pinned['stunnel']['p99'], 0)} | {fmt(pinned['mesh']['p99'], 0)} | added "
        f"{added_pinned['mesh']['p99']:.0f} µs vs stunnel's "
        f"{added_pinned['stunnel']['p99']:.0f} µs | ≤ stunnel's |",
        f"| new connections / s, one loop | {fmt(cr['direct'], 0)} | {fmt(cr['stunnel'], 0)} | "
        f"{fmt(cr['mesh'], 0)} | {cr['mesh'][0] / cr['stunnel'][0]:.2f}x stunnel | |",
        f"| new connections / s, 4 loops | - | {fmt(crp['stunnel'], 0)} | "
        f"{fmt(crp['mesh'], 0)} | {crp['mesh'][0] / crp['stunnel'][0]:.2f}x stunnel | |",
        f"| new connections per proxy core-second, 4 loops | - | {fmt(crc['stunnel'], 0)} | "
        f"{fmt(crc['mesh'], 0)} | {crc['mesh'][0] / crc['stunnel'][0]:.2f}x stunnel "
        "| ≥ 5x stunnel |",
        f"| RSS per open connection, per proxy, first rep (KiB) | - | {fmt(mem['stunnel'], 1)} | "
        f"{fmt(mem['mesh'], 1)} | | ≤ 8 KiB |",
        "",
        "| 1 KiB RTT through our raw mTLS relay pair where the ztunnels run (the same Python "
        "TLS plumbing, no HTTP/2) | p50 (µs) | p99 (µs) | added p50 / p99, vs the mesh's |",
        "|---|---|---|---|",
        *(
            f"| {title} | {fmt(src['relay_zt']['p50'], 0)} | {fmt(src['relay_zt']['p99'], 0)} | "
            f"{add['relay_zt']['p50']:.0f} / {add['relay_zt']['p99']:.0f} µs, vs "
            f"{add['mesh']['p50']:.0f} / {add['mesh']['p99']:.0f} µs |"
            for title, src, add in (
                ("unpinned", lat, added),
                ("chain pinned to one CPU", pinned, added_pinned),
            )
        ),
        "",
        "| eBPF redirect alone: one plaintext relay (ztunnel's passthrough code, in node1's "
        "ztunnel netns) | addressed directly | reached by the redirect | ratio | target |",
        "|---|---|---|---|---|",
        f"| throughput, 1 stream (Gbit/s) | {fmt(rd['splice']['gbit_s'])} | "
        f"{fmt(rd['passthrough']['gbit_s'])} | "
        f"{rd['passthrough']['gbit_s'][0] / rd['splice']['gbit_s'][0]:.2f}x | ≥ 0.9x |",
        f"| 1 KiB RTT p50 / p99, chain pinned to one CPU (µs) | "
        f"{fmt(rd['splice']['p50_us'], 0)} / "
        f"{fmt(rd['splice']['p99_us'], 0)} | {fmt(rd['passthrough']['p50_us'], 0)} / "
        f"{fmt(rd['passthrough']['p99_us'], 0)} | "
        f"{rd['passthrough']['p50_us'][0] / rd['splice']['p50_us'][0]:.2f}x / "
        f"{rd['passthrough']['p99_us'][0] / rd['splice']['p99_us'][0]:.2f}x | ≤ 1.1x |",
        f"| eBPF programs during the mesh stream, both nodes (cores; ns per run) | | "
        f"{fmt(ebpf['bpf_cores'], 4)}; {fmt(ebpf['ns_per_run'], 0)} ns, "
        f"{ebpf['runs_per_s'][0]:.0f} runs/s at {tp['mesh'][0]:.2f} Gbit/s "
        f"| {100 * ebpf_share:.1f}% of the proxies' CPU | |",
        "",
        "| HBONE framing in isolation (one core, in process) | µs per MiB | target |",
        "|---|---|---|",
        f"| HTTP/2 DATA send (sans-IO) | {fmt(fr['send_us_per_mib'], 0)} | |",
        f"| HTTP/2 DATA receive and acknowledge (sans-IO) | {fmt(fr['receive_us_per_mib'], 0)} | |",
        f"| TLS 1.3 encrypt + decrypt (AES-GCM, memory BIOs) | {fmt(fr['tls_us_per_mib'], 0)} | |",
        f"| framing share of framing + TLS | {100 * fr['framing_share'][0]:.0f}% "
        f"({100 * fr['framing_share'][1]:.0f}-{100 * fr['framing_share'][2]:.0f}%) | ≤ 20% |",
        "",
        "| HBONE pool dial: TLS 1.3 mutual handshake, both ends (one core, in process) | ms | |",
        "|---|---|---|",
        f"| full | {fmt(hs['full_ms'])} | |",
        f"| resumed (ztunnel's session cache, stateless ticket) | {fmt(hs['resumed_ms'])} | "
        f"{hs['resumed_ms'][0] / hs['full_ms'][0]:.2f}x full |",
        "",
        "| L7 row (wrk, 32 connections) | haproxy (no policy) | waypoint (L7 policy) | ratio "
        "| target |",
        "|---|---|---|---|---|",
        f"| HTTP/1.1 requests / s | {fmt(http['haproxy']['req_per_s'], 0)} | "
        f"{fmt(http['waypoint']['req_per_s'], 0)} | "
        f"{http['waypoint']['req_per_s'][0] / http['haproxy']['req_per_s'][0]:.2f}x | |",
        f"| requests per proxy core-second | {fmt(http['haproxy']['req_per_proxy_core_s'], 0)} | "
        f"{fmt(http['waypoint']['req_per_proxy_core_s'], 0)} | "
        f"{per_core:.2f}x haproxy | ≥ 1.0x haproxy |",
        f"| latency p50 / p99 (ms) | {fmt(http['haproxy']['p50_ms'])} / "
        f"{fmt(http['haproxy']['p99_ms'])} | {fmt(http['waypoint']['p50_ms'])} / "
        f"{fmt(http['waypoint']['p99_ms'])} | | |",
        "",
        "The waypoint's path also crosses two ztunnels (HBONE in and out); haproxy's does not.",
        "The redirect row's relay is the same code both ways; reached by the redirect it runs",
        "inside ztunnel (which also serves the mesh) and the client is an enrolled pod.",
        "eBPF program time: kernel.bpf_stats_enabled, read from the node agents' program fds.",
        "Control-plane propagation has its own script (scripts/propagation).",
    ]
    return "\n".join(lines) + "\n"


def chart(rows: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib  # noqa: PLC0415 - optional: only for the chart

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    quantiles = ("p50", "p90", "p99")
    for ax, row, title in (
        (axes[0], "latency", "unpinned"),
        (axes[1], "latency_pinned", "whole chain on one CPU"),
    ):
        for i, p in enumerate(("direct", "stunnel", "mesh")):
            values = [median(rows[row][p], f"{q}_us")[0] for q in quantiles]
            ax.bar([x + i * 0.27 for x in range(3)], values, width=0.27, label=p)
        ax.set_xticks([x + 0.27 for x in range(3)], quantiles)
        ax.set_title(f"1 KiB round trip, {title}")
        ax.legend()
    axes[0].set_ylabel("µs (lower is better)")
    fig.tight_layout()
    fig.savefig(path)
    return f"chart: {path}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("--quick", action="store_true", help="short rows; under two minutes")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: scripts/bench needs root (it builds a local cluster)", file=sys.stderr)
        return 1
    ensure_packages()
    bench = Bench(max(args.reps, 3), args.quick)
    started = time.monotonic()
    try:
        bench.setup()
        rows = bench.run()
    finally:
        bench.teardown()
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    meta = {
        "date": date,
        "reps": bench.reps,
        "quick": args.quick,
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}",
        "seconds": round(time.monotonic() - started, 1),
    }
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{date}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = report(rows, meta)
    (out / f"{date}.md").write_text(table)
    print("\n" + table)
    print(chart(rows, out / f"{date}.png"))
    print(f"results: {out / date}.{{json,md}} ({meta['seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
