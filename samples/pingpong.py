"""Benchmark workload: a 1 KiB ping-pong server and its measuring clients (stdout: JSON).

python3 -m samples.pingpong serve PORT
python3 -m samples.pingpong rtt HOST PORT COUNT         round trips on one connection
python3 -m samples.pingpong connrate HOST PORT SECONDS [WORKERS]  connect, 1 exchange, close, repeat
python3 -m samples.pingpong hold HOST PORT N SECONDS    keep N connections open (memory)
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import statistics
import sys
import threading
import time
from typing import Any

SIZE = 1024


def serve(port: int) -> None:
    listener = socket.create_server(("0.0.0.0", port), reuse_port=True, backlog=4096)  # noqa: S104
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_pong, args=(conn,), daemon=True).start()


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _pong(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        try:
            while True:
                conn.sendall(_recv_exact(conn, SIZE))
        except OSError:
            return


def rtt(host: str, port: int, count: int) -> dict[str, float]:
    payload = b"x" * SIZE
    samples = []
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):  # warm-up (and, through the mesh, the pooled connection)
            conn.sendall(payload)
            _recv_exact(conn, SIZE)
        for _ in range(count):
            start = time.perf_counter()
            conn.sendall(payload)
            _recv_exact(conn, SIZE)
            samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    q = statistics.quantiles(samples, n=100)
    return {"p50_us": q[49], "p90_us": q[89], "p99_us": q[98], "count": count}


def _connect_loop(host: str, port: int, end: float) -> int:
    payload = b"x" * SIZE
    done = 0
    while time.monotonic() < end:
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(payload)
            _recv_exact(conn, SIZE)
        done += 1
    return done


def connrate(host: str, port: int, seconds: float, workers: int = 1) -> dict[str, float]:
    """Connect-send-receive-close loops, `workers` processes in parallel (one loop measures the
    latency of a new connection; several measure how many the path can set up)."""
    started = time.monotonic()
    end = started + seconds
    if workers == 1:
        done = _connect_loop(host, port, end)
    else:
        with multiprocessing.Pool(workers) as pool:
            done = sum(pool.starmap(_connect_loop, [(host, port, end)] * workers))
    return {"conns_per_s": done / (time.monotonic() - started), "count": done}


def churn(host: str, port: int, seconds: float) -> dict[str, Any]:
    """New connections back to back; every failure (refused, reset, wrong echo) is counted."""
    payload = b"x" * SIZE
    ok = failed = 0
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(payload)
                if _recv_exact(conn, SIZE) != payload:
                    raise ConnectionError("wrong echo")
            ok += 1
        except OSError as exc:
            failed += 1
            kind = f"{type(exc).__name__}: {exc}"[:80]
            errors[kind] = errors.get(kind, 0) + 1
    return {"ok": ok, "failed": failed, "errors": errors}


def hold(host: str, port: int, n: int, seconds: float) -> dict[str, float]:
    conns = []
    for _ in range(n):
        conn = socket.create_connection((host, port), timeout=10)
        conn.sendall(b"x" * SIZE)
        _recv_exact(conn, SIZE)
        conns.append(conn)
    print(json.dumps({"held": n}), flush=True)
    time.sleep(seconds)
    for conn in conns:
        conn.close()
    return {"held": n}


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "serve":
        serve(int(args[0]))
        return 0
    host, port = args[0], int(args[1])
    if mode == "rtt":
        result = rtt(host, port, int(args[2]))
    elif mode == "connrate":
        result = connrate(host, port, float(args[2]), int(args[3]) if len(args) > 3 else 1)
    elif mode == "churn":
        result = churn(host, port, float(args[2]))
    elif mode == "hold":
        result = hold(host, port, int(args[2]), float(args[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
