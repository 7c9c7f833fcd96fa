"""The redirection programs' decisions on crafted packets (bpf_prog_test_run_opts): each verdict
of the registry that a packet alone can produce, and its counter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bpf.loader import Datapath, compile_datapath
from bpf.refusal import load_programs
from bpf.verdicts import Verdict
from localcluster import naming, teardown
from tests.bpf_testrun import IPPROTO_UDP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, packet, run

POD, PEER, OTHER, ZT = "10.244.1.3", "10.244.2.3", "10.244.1.9", "10.244.1.2"
NEIGHBOUR = "10.244.1.4"  # another enrolled pod of the node
ZT_IFINDEX = 4242


@pytest.fixture
def datapath(cluster_name: str) -> Iterator[Datapath]:
    dp = compile_datapath(naming.bpf_pin_dir(cluster_name) / "node1")
    dp.configure(zt_ifindex=ZT_IFINDEX, zt_ip=ZT, zt_mac="02:00:00:00:00:0a", mark=0x5A0)
    dp.enroll(POD, 7)
    dp.enroll(NEIGHBOUR, 8)
    try:
        yield dp
    finally:
        teardown.down(cluster_name)  # removes the pins
        assert not naming.bpf_pin_dir(cluster_name).exists()


def counted(dp: Datapath, verdict: Verdict) -> int:
    return dp.verdicts()[verdict.name]


@pytest.mark.parametrize(
    ("src", "dst", "proto", "expected", "verdict"),
    [
        (POD, PEER, 6, TC_ACT_REDIRECT, Verdict.REDIRECT_OUT),
        (OTHER, PEER, 6, TC_ACT_OK, Verdict.PASS_NOT_ENROLLED),  # never touch other pods
        (POD, PEER, IPPROTO_UDP, TC_ACT_OK, Verdict.PASS_NOT_TCP),  # DNS etc. pass
    ],
)
def test_pod_out(
    datapath: Datapath, src: str, dst: str, proto: int, expected: int, verdict: Verdict
) -> None:
    before = counted(datapath, verdict)
    assert run(datapath.fds["pod_out"], packet(src, dst, 40000, 8080, proto)) == expected
    assert counted(datapath, verdict) == before + 1


@pytest.mark.parametrize(
    ("src", "sport", "dport", "ingress", "expected", "verdict"),
    [
        (PEER, 40000, 8080, 0, TC_ACT_REDIRECT, Verdict.REDIRECT_IN),  # from elsewhere → ztunnel
        (PEER, 40000, 8080, ZT_IFINDEX, TC_ACT_OK, Verdict.PASS_FROM_ZTUNNEL),  # ztunnel dials
        (NEIGHBOUR, 40000, 15008, ZT_IFINDEX, TC_ACT_REDIRECT, Verdict.REDIRECT_IN),  # HBONE in
        (NEIGHBOUR, 15008, 40000, ZT_IFINDEX, TC_ACT_REDIRECT, Verdict.REDIRECT_IN),  # its answers
        # ztunnel's outbound socket answering the pod for a remote 15008 (regression: sent
        # back to ztunnel as if it were same-node HBONE, so the pod never connected)
        (PEER, 15008, 40000, ZT_IFINDEX, TC_ACT_OK, Verdict.PASS_FROM_ZTUNNEL),
        (ZT, 15008, 40000, ZT_IFINDEX, TC_ACT_OK, Verdict.PASS_FROM_ZTUNNEL),  # ... or its own
    ],
)
def test_pod_in(
    datapath: Datapath,
    src: str,
    sport: int,
    dport: int,
    ingress: int,
    expected: int,
    verdict: Verdict,
) -> None:
    before = counted(datapath, verdict)
    data = packet(src, POD, sport, dport)
    assert run(datapath.fds["pod_in"], data, ingress_ifindex=ingress) == expected
    assert counted(datapath, verdict) == before + 1


def test_pod_in_leaves_traffic_for_other_pods_alone(datapath: Datapath) -> None:
    assert run(datapath.fds["pod_in"], packet(PEER, OTHER, 1, 80)) == TC_ACT_OK


@pytest.mark.parametrize(
    ("src", "dst", "dport", "expected", "verdict"),
    [
        (POD, PEER, 8080, TC_ACT_SHOT, Verdict.DROP_NO_LISTENER),  # ztunnel absent: fail closed
        (PEER, POD, 8080, TC_ACT_SHOT, Verdict.DROP_NO_LISTENER),
        (PEER, POD, 15008, TC_ACT_SHOT, Verdict.DROP_NO_LISTENER),
        (PEER, ZT, 15012, TC_ACT_OK, Verdict.PASS_ZTUNNEL_OWN),  # ztunnel's own traffic
        (PEER, OTHER, 80, TC_ACT_OK, Verdict.PASS_UNRELATED),
    ],
)
def test_zt_in(
    datapath: Datapath, src: str, dst: str, dport: int, expected: int, verdict: Verdict
) -> None:
    before = counted(datapath, verdict)
    assert run(datapath.fds["zt_in"], packet(src, dst, 40000, dport)) == expected
    assert counted(datapath, verdict) == before + 1


def test_missing_config_fails_closed(cluster_name: str) -> None:
    dp = compile_datapath(naming.bpf_pin_dir(cluster_name) / "node1")
    try:
        dp.enroll(POD, 7)  # enrolled, but where ztunnel is was never written
        assert run(dp.fds["pod_out"], packet(POD, PEER, 40000, 80)) == TC_ACT_SHOT
        assert dp.verdicts()["DROP_NO_CONFIG"] == 1
    finally:
        teardown.down(cluster_name)


def test_a_program_the_kernel_refuses_is_named_with_the_helper_and_its_log_kept(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """F-13: BCC's bare "Invalid argument" becomes the helper the kernel refused (here one no
    kernel has), and the verifier's log still reaches stderr."""
    from bcc import BPF  # noqa: PLC0415 - Debian's python3-bpfcc, root tier only

    source = b"int f(struct __sk_buff *skb) { long (*h)(void) = (void *)999; return h(); }"
    with pytest.raises(RuntimeError, match=r"cannot load f: the kernel refuses BPF helper \w+#999"):
        load_programs(BPF(text=source), ("f",), BPF.SCHED_CLS)
    assert "invalid func unknown#999" in capfd.readouterr().err
