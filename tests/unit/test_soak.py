"""scripts/soak.py's judgements (pure): the slope that says whether RSS or fds grow, and which
failures a deliberate restart explains."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def load() -> ModuleType:
    """The script by path, registered first: its dataclasses look their module up."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
    spec = importlib.util.spec_from_file_location("script_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak = load()


@pytest.mark.parametrize(
    ("samples", "per_hour"),
    [
        ([], 0.0),
        ([(0.0, 5.0)], 0.0),
        ([(0.0, 5.0), (1800.0, 5.0), (3600.0, 5.0)], 0.0),  # flat
        ([(0.0, 10.0), (1800.0, 11.0), (3600.0, 12.0)], 2.0),  # +2 an hour
        ([(0.0, 12.0), (3600.0, 10.0)], -2.0),
        ([(0.0, 10.0), (900.0, 14.0), (1800.0, 10.0), (2700.0, 14.0)], pytest.approx(3.2)),
        ([(60.0, 1.0), (60.0, 3.0)], 0.0),  # no spread in time: no slope
    ],
)
def test_slope_per_hour(samples: list[tuple[float, float]], per_hour: float) -> None:
    assert soak.slope_per_hour(samples) == per_hour


@pytest.mark.parametrize(
    ("failures", "restarts", "split"),
    [
        ([], [100.0], (0, 0)),
        ([105.0, 114.9], [100.0], (2, 0)),
        ([99.0, 116.0], [100.0], (0, 2)),  # before it, and after its window
        ([10.0, 305.0, 600.0], [300.0, 590.0], (2, 1)),
    ],
)
def test_failures_are_charged_to_a_restart_only_within_its_window(
    failures: list[float], restarts: list[float], split: tuple[int, int]
) -> None:
    assert soak.split_by_restarts(failures, restarts, 15.0) == split
