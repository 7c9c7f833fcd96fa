"""The cache's report of a source that cannot reach the cluster (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from sources.base import Cache

Step = tuple[float, str, str, str]  # (time, "failed" | "answered", kind, reason)


@pytest.mark.parametrize(
    ("steps", "at", "expected"),
    [
        ([], 5.0, None),
        ([(1.0, "failed", "Pod", "HTTP 503")], 4.0, (3.0, "Pod: HTTP 503")),
        # Since the first failure in a row; the reason is the latest.
        (
            [(1.0, "failed", "Pod", "HTTP 503"), (2.0, "failed", "Pod", "timeout")],
            4.0,
            (3.0, "Pod: timeout"),
        ),
        ([(1.0, "failed", "Pod", "HTTP 503"), (2.0, "answered", "Pod", "")], 4.0, None),
        # The kind failing the longest is the one reported; another's answer does not clear it.
        (
            [
                (1.0, "failed", "Namespace", "refused"),
                (2.0, "failed", "Pod", "refused"),
                (3.0, "answered", "Pod", ""),
            ],
            4.0,
            (3.0, "Namespace: refused"),
        ),
    ],
)
def test_unavailable_reports_the_longest_failing_kind(
    steps: list[Step], at: float, expected: tuple[float, str] | None
) -> None:
    now = [0.0]
    cache = Cache({"Pod", "Namespace"}, clock=lambda: now[0])
    for when, what, kind, reason in steps:
        now[0] = when
        if what == "failed":
            cache.source_failed(kind, reason)
        else:
            cache.source_answered(kind)
    now[0] = at
    assert cache.unavailable() == expected
