"""When to renew a certificate and how long to wait after a failure (pure; time is an argument).

Renew at half of the lifetime left when the certificate arrived, give or take 1% of it (Istio
and ztunnel renew at half-life; Istio's SECRET_GRACE_PERIOD_RATIO_JITTER, 0.01, keeps
certificates fetched together, such as a node's 500 at start-up, from renewing together).
Measuring from arrival, not from notBefore, matters because CAs backdate notBefore to absorb
clock skew: with a short TTL, half-life from notBefore can lie before issuance. If
notBefore lies in the future beyond the tolerated skew, renew at once (ztunnel's
`get_duration_until_refresh`). After a failure, retry with capped exponential
backoff and equal jitter, per identity, so a recovering CA is not hit by every node at once.
A certificate is presented only inside its validity window: never once expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ztunnel.identity.verify import CLOCK_SKEW

RETRY_INITIAL = timedelta(seconds=0.5)
# ztunnel caps certificate fetch backoff at 150 s (identity/manager.rs).
RETRY_CAP = timedelta(seconds=150)


# Renewal lands within ±1% of the lifetime around half-life (Istio: 0.01).
RENEW_JITTER = 0.01

# Never fetch the same identity twice within this, whatever the certificate says (a guard
# against a CA that issues already-stale certificates).
MIN_REFRESH_INTERVAL = timedelta(seconds=1)


@dataclass(frozen=True)
class Validity:
    not_before: datetime
    not_after: datetime
    received: datetime
    jitter: float = 0.5  # in [0, 1), drawn once per certificate; 0.5: exactly half-life


def refresh_at(validity: Validity, now: datetime) -> datetime:
    if validity.not_before > now + CLOCK_SKEW:
        return now
    ratio = 0.5 + RENEW_JITTER * (2 * validity.jitter - 1)
    half = max((validity.not_after - validity.received) * ratio, MIN_REFRESH_INTERVAL)
    return validity.received + half


def usable(validity: Validity, now: datetime) -> bool:
    return validity.not_before - CLOCK_SKEW <= now < validity.not_after


def retry_delay(failures: int, jitter: float, left: timedelta | None = None) -> timedelta:
    """Delay after the n-th consecutive failure (n ≥ 1); `jitter` in [0, 1) spreads it over
    [d/2, d) ("equal jitter"). `left`: the validity left on the certificate still held; the
    delay never exceeds a quarter of it, so that once the CA is back the renewal lands before
    the expiry instead of after it (a 24 h certificate keeps the 150 s cap until its last
    10 minutes)."""
    exponent = min(max(failures - 1, 0), 32)
    base = min(RETRY_INITIAL * (1 << exponent), RETRY_CAP)
    if left is not None:
        base = max(min(base, left / 4), RETRY_INITIAL)
    return base / 2 + base / 2 * jitter


def next_wakeup(validity: Validity | None, retry_at: datetime | None, now: datetime) -> datetime:
    """The next moment the worker of one identity has something to do: the retry while failing
    (never the already-passed refresh time: that would spin), else the refresh; and the expiry of
    a held certificate, so it is dropped the moment it expires."""
    if retry_at is not None:
        candidates = [retry_at]
    elif validity is not None:
        candidates = [refresh_at(validity, now)]
    else:
        return now
    if validity is not None and validity.not_after > now:
        candidates.append(validity.not_after)
    return max(min(candidates), now)
