"""RELIABILITY L-6: memory overload is shed in stages (ztunnel.proxy.overload): the pure stage
and victim choices, the cgroup readers, and the stages acting on both in-process ztunnels."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common import heap
from tests.unit.ztunnel.harness import Mesh, mesh, refused_before_tls, roundtrip
from tests.waiting import until
from ztunnel.proxy import overload
from ztunnel.proxy.overload import Stage, Usage

MIB = 1 << 20


@pytest.mark.parametrize(
    ("used", "stage"),
    [
        (0, Stage.NORMAL),
        (89, Stage.NORMAL),
        (90, Stage.CLOSE_IDLE),
        (94, Stage.CLOSE_IDLE),
        (95, Stage.REFUSE_NEW),
        (97, Stage.REFUSE_NEW),
        (98, Stage.RESET_HEAVIEST),
        (120, Stage.RESET_HEAVIEST),
    ],
)
def test_stage_of_the_fraction_used(used: int, stage: Stage) -> None:
    assert overload.stage_of(Usage(used, 100)) is stage


def test_no_sample_is_no_shedding() -> None:
    assert overload.stage_of(None) is Stage.NORMAL


@pytest.mark.parametrize(
    ("costs", "need", "chosen"),
    [
        ({"a": 10, "b": 30, "c": 20}, 25, ["b"]),
        ({"a": 10, "b": 30, "c": 20}, 45, ["b", "c"]),
        ({"a": 10, "b": 30, "c": 20}, 1000, ["b", "c", "a"]),  # all there is, not more
        ({"a": 0, "b": 5}, 1000, ["b"]),  # one holding nothing is never reset
        ({"a": 10}, 0, []),
        ({}, 10, []),
    ],
)
def test_the_heaviest_until_their_bytes_cover_the_need(
    costs: dict[str, int], need: int, chosen: list[str]
) -> None:
    assert overload.heaviest(costs.items(), need) == chosen


def test_excess_is_measured_from_the_refusal_threshold() -> None:
    assert overload.excess(Usage(99 * MIB, 100 * MIB)) == 4 * MIB
    assert overload.excess(Usage(50, 100)) == 0


def _cgroup_files(root: Path, *, v1: bool, limit: str) -> Path:
    proc = root / "cgroup"
    if v1:
        proc.write_text("4:memory:/pods/zt\n0::/\n")
        d = root / "memory" / "pods" / "zt"
        d.mkdir(parents=True)
        (d / "memory.limit_in_bytes").write_text(limit + "\n")
        (d / "memory.usage_in_bytes").write_text("900\n")
        (d / "memory.stat").write_text("cache 300\ninactive_file 1\ntotal_inactive_file 200\n")
    else:
        proc.write_text("0::/pods/zt\n")
        d = root / "pods" / "zt"
        d.mkdir(parents=True)
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text("900\n")
        (d / "memory.stat").write_text("anon 500\ninactive_file 200\nactive_file 100\n")
    return proc


@pytest.mark.parametrize("v1", [False, True])
def test_the_working_set_of_this_process_cgroup_against_its_limit(tmp_path: Path, v1: bool) -> None:
    proc = _cgroup_files(tmp_path, v1=v1, limit="1000")
    cgroup = overload.find_cgroup(proc, tmp_path)
    assert cgroup is not None
    assert overload.cgroup_usage(cgroup) == Usage(700, 1000)  # usage minus inactive file pages


@pytest.mark.parametrize(("v1", "limit"), [(False, "max"), (True, "9223372036854771712")])
def test_a_cgroup_without_a_limit_means_no_shedding(tmp_path: Path, v1: bool, limit: str) -> None:
    cgroup = overload.find_cgroup(_cgroup_files(tmp_path, v1=v1, limit=limit), tmp_path)
    assert cgroup is not None
    assert overload.cgroup_usage(cgroup) is None


def test_unreadable_cgroups_are_no_sample(tmp_path: Path) -> None:
    assert overload.find_cgroup(tmp_path / "missing", tmp_path) is None
    proc = _cgroup_files(tmp_path, v1=False, limit="garbage")
    cgroup = overload.find_cgroup(proc, tmp_path)
    assert cgroup is not None
    assert overload.cgroup_usage(cgroup) is None


def test_an_explicit_limit_weighs_this_process_rss() -> None:
    usage = overload.sampler(1 << 40)()
    assert usage is not None
    assert 1 * MIB < usage.used < 1 << 40


# --- the stages acting on the in-process mesh -----------------------------------------------------


def run(body: Callable[[Mesh], Awaitable[None]]) -> None:
    async def main() -> None:
        async with mesh() as m:
            await asyncio.wait_for(body(m), 30)

    asyncio.run(main())


def shed(m: Mesh, node: str, action: str) -> float:
    return m.metric(node, "ambientmesh_ztunnel_memory_shed_total", action=action)


@pytest.mark.usefixtures("state_dir")
def test_idle_pooled_connections_close_first_then_new_work_is_refused_then_it_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given_back: list[None] = []
    monkeypatch.setattr(heap, "give_back", lambda: given_back.append(None))

    async def body(m: Mesh) -> None:
        node1, node2 = m.proxies["node1"], m.proxies["node2"]
        assert await roundtrip(m, b"a") == b"A|EOF"
        assert node1.pool.dials == 1

        node1.on_memory(Usage(91, 100))  # CLOSE_IDLE: the idle pooled connection goes
        assert shed(m, "node1", "close_idle") == 1
        assert m.metric("node1", "ambientmesh_ztunnel_memory_stage") == 1
        assert len(given_back) == 1  # the heap's free memory too
        assert await roundtrip(m, b"b") == b"B|EOF"  # still served, on a new dial
        assert node1.pool.dials == 2
        node1.on_memory(Usage(50, 100))
        assert len(given_back) == 1

        listener = node2.hbone[m.server_ip].server.sockets[0].getsockname()
        node2.on_memory(Usage(96, 100))  # REFUSE_NEW, at the destination
        _, writer, code = await m.socks(m.server)
        writer.close()
        assert code != 0  # the new stream got 503
        assert await refused_before_tls(listener) == b"RST"  # a new HBONE connection: RST
        refused = {"direction": "inbound", "reason": "memory_pressure"}
        assert m.metric("node2", "ambientmesh_ztunnel_rejections_total", **refused) == 2

        node1.on_memory(Usage(96, 100))  # ... and at the source: the client is refused (RST)
        with pytest.raises(ConnectionError):
            await m.socks(m.server)
        refused = {"direction": "outbound", "reason": "memory_pressure"}
        assert m.metric("node1", "ambientmesh_ztunnel_rejections_total", **refused) == 1

        node1.on_memory(Usage(10, 100))
        node2.on_memory(None)  # a failed sample sheds nothing
        assert m.metric("node2", "ambientmesh_ztunnel_memory_stage") == 0
        assert await roundtrip(m, b"d") == b"D|EOF"

    run(body)


@pytest.mark.usefixtures("state_dir")
def test_the_connection_buffering_the_most_is_reset_and_a_light_one_lives() -> None:
    """A server that stops reading makes node2 hold its client's bytes (up to the stream
    window); past 98 % that tunnel is reset, and an idle one beside it keeps working."""

    async def body(m: Mesh) -> None:
        node2 = m.proxies["node2"]
        stalled: list[asyncio.StreamWriter] = []

        async def never_reads(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stalled.append(writer)

        server = await asyncio.start_server(never_reads, m.server_ip, 9101)
        heavy_reader, heavy, _ = await m.socks((m.server_ip, 9101))
        heavy.write(bytes(32 * MIB))  # far beyond the kernel's buffers: the rest waits in node2
        light_reader, light, _ = await m.socks(m.server)
        light.write(b"still here")
        assert await light_reader.readexactly(10) == b"STILL HERE"

        def held_at_node2() -> int:
            return max(record.cost() for record in node2.active.values())

        await until(lambda: held_at_node2() > MIB, timeout=10)
        node2.on_memory(Usage(99 * MIB, 100 * MIB))  # excess over 95 %: 4 MiB
        assert shed(m, "node2", "reset") == 1
        with pytest.raises(ConnectionResetError):  # the server never wrote: nothing but RST
            await asyncio.wait_for(heavy_reader.read(), 5)
        light.write(b"and again")
        assert await light_reader.readexactly(9) == b"AND AGAIN"
        light.close()
        heavy.close()
        for writer in stalled:
            writer.close()
        server.close()

    run(body)
