"""Renewal schedule (pure, times are arguments: a fake clock by construction)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.pki import NOW
from ztunnel.identity import schedule
from ztunnel.identity.schedule import Validity

H = timedelta(hours=1)
DAY = Validity(NOW, NOW + 24 * H, NOW)


def test_refresh_at_half_life() -> None:
    assert schedule.refresh_at(DAY, NOW) == NOW + 12 * H


@pytest.mark.parametrize(
    ("jitter", "after"),
    [
        (0.0, 24 * H * 0.49),  # the earliest: 1% of the lifetime before half-life
        (0.5, 12 * H),
        (0.75, 24 * H * 0.505),
        (1.0, 24 * H * 0.51),  # the bound jitter never reaches
    ],
)
def test_renewal_is_spread_around_half_life(jitter: float, after: timedelta) -> None:
    validity = Validity(NOW, NOW + 24 * H, NOW, jitter)
    assert schedule.refresh_at(validity, NOW) == NOW + after


def test_not_before_in_the_future_refreshes_now() -> None:
    assert schedule.refresh_at(Validity(NOW + H, NOW + 2 * H, NOW), NOW) == NOW


def test_backdated_short_lived_cert_is_not_renewed_at_once() -> None:
    """Regression: a 30 s cert backdated by 5 min had its half-life before issuance, so the
    manager renewed it in a loop (hundreds of CSRs a second)."""
    issued = Validity(NOW - timedelta(minutes=5), NOW + timedelta(seconds=30), NOW)
    assert schedule.refresh_at(issued, NOW) == NOW + timedelta(seconds=15)


def test_refresh_never_sooner_than_the_floor() -> None:
    nearly_expired = Validity(NOW - H, NOW + timedelta(milliseconds=10), NOW)
    assert schedule.refresh_at(nearly_expired, NOW) == NOW + schedule.MIN_REFRESH_INTERVAL


@pytest.mark.parametrize(
    ("at", "ok"),
    [
        (NOW, True),
        (NOW + 24 * H - timedelta(microseconds=1), True),
        (NOW + 24 * H, False),
        (NOW - timedelta(minutes=4), True),
        (NOW - timedelta(minutes=6), False),
    ],
)
def test_usable_never_after_expiry(at: object, ok: bool) -> None:
    assert schedule.usable(DAY, at) is ok  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failures", "jitter", "seconds"),
    [
        (1, 0.0, 0.25),
        (1, 0.999999, 0.5),
        (2, 0.0, 0.5),
        (5, 0.0, 4.0),
        (20, 0.0, 75.0),
        (20, 0.999999, 150.0),
        (10_000, 0.0, 75.0),
    ],
)
def test_retry_backoff_is_capped_and_jittered(failures: int, jitter: float, seconds: float) -> None:
    assert schedule.retry_delay(failures, jitter).total_seconds() == pytest.approx(seconds, 1e-5)


@pytest.mark.parametrize(
    ("failures", "left_s", "seconds"),
    [
        (20, 86_400.0, 75.0),  # a day left: the usual cap
        (20, 600.0, 75.0),  # 10 minutes left: a quarter of it, 150 s, still the cap
        (20, 100.0, 12.5),  # 100 s left: at most 25 s
        (5, 8.0, 1.0),  # 8 s left: at most 2 s
        (5, 0.4, 0.25),  # nearly expired: never below the first retry's
    ],
)
def test_retries_quicken_as_the_held_certificate_nears_expiry(
    failures: int, left_s: float, seconds: float
) -> None:
    """A still-valid certificate must be renewed before it expires once the CA is back: the
    backoff never waits more than a quarter of the validity left."""
    delay = schedule.retry_delay(failures, 0.0, timedelta(seconds=left_s))
    assert delay.total_seconds() == pytest.approx(seconds, 1e-5)


def test_wakeup_without_a_cert_is_now() -> None:
    assert schedule.next_wakeup(None, None, NOW) == NOW


def test_wakeup_at_refresh_when_healthy() -> None:
    assert schedule.next_wakeup(DAY, None, NOW) == NOW + 12 * H


def test_failing_after_half_life_waits_for_the_retry_not_spinning() -> None:
    """Regression: past half-life with the CA down, the (past) refresh time made the worker spin."""
    at = NOW + 13 * H
    assert schedule.next_wakeup(DAY, at + timedelta(seconds=30), at) == at + timedelta(seconds=30)


def test_wakeup_at_expiry_to_drop_the_cert() -> None:
    at = NOW + 23 * H
    assert schedule.next_wakeup(DAY, at + 5 * H, at) == NOW + 24 * H
