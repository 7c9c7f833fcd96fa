"""scripts/bench.py, framing.py and handshake.py helpers that parse or compute (no cluster, no
timing assertions: benchmarks report numbers, they do not judge them in tests)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load(name: str) -> ModuleType:
    """A script by path (the repository's `bench/` results folder shadows the name)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPTS))  # bench.py imports framing.py as a sibling
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


bench = load("bench")
framing = load("framing")
handshake = load("handshake")

FDINFO = """pos:\t0
flags:\t02000002
mnt_id:\t15
ino:\t1057
prog_type:\t3
prog_jited:\t1
prog_tag:\t3b185187f1855c4c
memlock:\t4096
prog_id:\t11090
run_time_ns:\t{ns}
run_cnt:\t{runs}
recursion_misses:\t0
verified_insns:\t412
"""


def test_bpf_counters_sum_run_time_and_runs_over_programs(tmp_path: Path) -> None:
    infos = []
    for i, (ns, runs) in enumerate([(1000, 4), (250, 1)]):
        info = tmp_path / str(i)
        info.write_text(FDINFO.format(ns=ns, runs=runs))
        infos.append(info)
    assert bench.bpf_counters(infos) == (1250, 5)


def test_bpf_counters_of_a_kernel_without_stats_are_zero(tmp_path: Path) -> None:
    info = tmp_path / "old"
    info.write_text("pos:\t0\nprog_type:\t3\n")
    assert bench.bpf_counters([info]) == (0, 0)


def test_wrk_output_is_understood() -> None:
    out = """Running 2s test @ http://10.96.0.10:8080/
  Latency Distribution
     50%  410.00us
     99%    2.00ms
  137720 requests in 2.00s, 111.00MB read
Requests/sec:  68860.00
"""
    assert bench.parse_wrk(out) == pytest.approx(
        {"p50_ms": 0.41, "p99_ms": 2.0, "requests": 137720.0, "req_per_s": 68860.0}
    )


def test_framing_moves_every_byte_through_the_sans_io_pair() -> None:
    send, receive = framing.framing_us_per_mib(total_mib=1)
    assert send > 0
    assert receive > 0


def test_the_handshake_row_resumes_with_the_contexts_ztunnel_uses(tmp_path: Path) -> None:
    run = bench.Bench(1, True)
    shutil.rmtree(run.tmp)
    run.tmp = tmp_path  # its PKI goes here (pytest removes it)
    run.pki()
    result = handshake.measure(tmp_path, count=2)  # raises unless resumed ones resume
    assert set(result) == {"full_ms", "resumed_ms"}


def test_the_report_renders_every_row_from_a_run_of_every_path() -> None:
    keys = [
        "gbit_s",
        "proxy_cores",
        "p50_us",
        "p90_us",
        "p99_us",
        "conns_per_s",
        "parallel_conns_per_s",
        "conns_per_proxy_core_s",
        "kib_per_conn_per_proxy",
        "req_per_s",
        "req_per_proxy_core_s",
        "p50_ms",
        "p99_ms",
        "bpf_cores",
        "ns_per_run",
        "runs_per_s",
        "send_us_per_mib",
        "receive_us_per_mib",
        "tls_us_per_mib",
        "framing_share",
        "full_ms",
        "resumed_ms",
    ]
    rows = {
        row: {path: [dict.fromkeys(keys, 2.0)] * 3 for path in paths}
        for row, paths in bench.ROW_PATHS.items()
    }
    table = bench.report(rows, {"date": "d", "reps": 3, "machine": "m"})
    assert "| chain pinned to one CPU | 2 (2-2) | 2 (2-2) | 0 / 0 µs, vs 0 / 0 µs |" in table
    assert "1.00x haproxy" in table
    assert (
        "the chain split across the two CPUs" in table and "1.00x the relay; 1.00x stunnel" in table
    )
