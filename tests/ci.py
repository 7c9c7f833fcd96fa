"""One rule for "are we in CI": .ci/run exports CI=true, nothing else counts."""

import os


def in_ci() -> bool:
    # Exactly "true" so a stray CI=0 or CI= locally does not turn skips into failures.
    return os.environ.get("CI") == "true"
