"""Python mirror of bpf/lib/verdicts.h (tests/unit/test_bpf_registry.py keeps them equal)."""

from __future__ import annotations

import enum


class Verdict(enum.IntEnum):
    PASS_NOT_TCP = 0
    PASS_NOT_ENROLLED = 1
    REDIRECT_OUT = 2
    REDIRECT_IN = 3
    PASS_FROM_ZTUNNEL = 4
    ASSIGN_ESTABLISHED = 5
    ASSIGN_OUTBOUND = 6
    ASSIGN_HBONE = 7
    ASSIGN_INBOUND_PLAIN = 8
    PASS_ZTUNNEL_OWN = 9
    DROP_NO_LISTENER = 10
    DROP_ASSIGN_FAILED = 11
    DROP_NO_CONFIG = 12
    PASS_UNRELATED = 13
