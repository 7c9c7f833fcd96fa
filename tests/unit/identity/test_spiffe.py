"""SPIFFE ID parsing (RELIABILITY I-5): strict, with a reason for every rejection."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.spiffe import SpiffeId, SpiffeIdError

GOOD = "spiffe://cluster.local/ns/demo/sa/client"


def test_parse_and_principal() -> None:
    sid = SpiffeId.parse(GOOD)
    assert sid == SpiffeId("cluster.local", "demo", "client")
    assert str(sid) == GOOD
    assert sid.principal == "cluster.local/ns/demo/sa/client"


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://cluster.local/ns/demo/sa/client/extra",  # (b) extra segment
        "spiffe://cluster.local/ns/demo",  # (b) missing sa
        "spiffe://cluster.local/namespace/demo/sa/client",  # (b) wrong literal
        "spiffe://cluster.local/ns/demo/serviceaccount/client",
        "spiffe://cluster.local/ns/de%2Fmo/sa/client",  # (d) percent-encoding
        "spiffe://cluster.local/ns/./sa/client",  # (d) dot segments
        "spiffe://cluster.local/ns/../sa/client",
        "spiffe://cluster.local/ns//sa/client",  # empty segment
        "spiffe://cluster.local/ns/demo/sa/client/",  # trailing slash
        "spiffe://cluster.local/ns/demo/sa/client?x=1",  # (d) query
        "spiffe://cluster.local/ns/demo/sa/client#f",  # (d) fragment
        "spiffe://cluster.local:443/ns/demo/sa/client",  # (d) port
        "spiffe://user@cluster.local/ns/demo/sa/client",  # (d) userinfo
        "spiffe://Cluster.Local/ns/demo/sa/client",  # uppercase trust domain
        "spiffe:///ns/demo/sa/client",  # empty trust domain
        "SPIFFE://cluster.local/ns/demo/sa/client",  # (f) scheme is case-sensitive here
        "https://cluster.local/ns/demo/sa/client",  # (f) other scheme
        "spiffe://cluster.local/ns/" + "a" * 2048 + "/sa/x",  # (e) too long
        "",
    ],
)
def test_rejects(value: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(value)


_seg = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@given(td=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True), ns=_seg, sa=_seg)
def test_roundtrip(td: str, ns: str, sa: str) -> None:
    sid = SpiffeId(td, ns, sa)
    assert SpiffeId.parse(str(sid)) == sid


@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_spiffe_id_error(text: str) -> None:
    with contextlib.suppress(SpiffeIdError):
        SpiffeId.parse(text)
