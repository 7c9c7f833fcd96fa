"""`ambientctl bench` runs the repository's scripts/bench.py with the same options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ambientctl import benchverb
from ambientctl.main import build_parser


def test_ambientctl_bench_runs_scripts_bench_with_its_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[list[str]] = []

    def call(argv: list[str]) -> int:
        ran.append(argv)
        return 0

    monkeypatch.setattr(subprocess, "call", call)
    args = build_parser().parse_args(["bench", "--quick", "--reps", "4"])
    assert args.func(args) == 0
    assert ran == [[sys.executable, str(benchverb.SCRIPT), "--quick", "--reps", "4"]]
    assert benchverb.SCRIPT.is_file()
