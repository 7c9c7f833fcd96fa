"""`ambientctl bench`: scripts/bench from the repository this ambientctl runs from (it builds
its own local cluster, so `--cluster` does not apply; results in bench/results/)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_ = "benchmarks against stunnel, haproxy and the bare kernel (../shared/PERF.md)"
    p = sub.add_parser("bench", help=help_, description=help_)
    p.add_argument("--quick", action="store_true", help="short rows; under two minutes")
    p.add_argument("--reps", type=int, default=3, help="repetitions (at least 3)")
    p.set_defaults(func=run)


def command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        *(["--quick"] if args.quick else []),
        "--reps",
        str(args.reps),
    ]


def run(args: argparse.Namespace) -> int:
    if not SCRIPT.exists():
        raise ValueError(f"bench: {SCRIPT} not found: it runs from a repository checkout")
    return subprocess.call(command(args))
