"""Naming what the kernel refused from the verifier's log (RELIABILITY F-13)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bpf.loader import final_source
from bpf.refusal import HELPERS, refusal
from tests.ci import in_ci


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            "0: (85) call unknown#124\ninvalid func unknown#124\nprocessed 1 insns",
            "the kernel refuses BPF helper bpf_sk_assign (#124, Linux >= 5.7)",
        ),
        (
            "unknown func bpf_redirect_peer#155",
            "the kernel refuses BPF helper bpf_redirect_peer (#155, Linux >= 5.10)",
        ),
        (
            "program of this type cannot use helper bpf_sk_assign#124",
            "the kernel refuses BPF helper bpf_sk_assign (#124, Linux >= 5.7)",
        ),
        ("invalid func unknown#999", "the kernel refuses BPF helper unknown#999"),
        ("R1 invalid mem access 'scalar'", None),
        ("", None),
    ],
)
def test_refusal_names_the_helper(log: str, expected: str | None) -> None:
    assert refusal(log) == expected


def test_every_helper_the_programs_call_is_known() -> None:
    called = set(re.findall(r"\b(bpf_\w+)\(", final_source())) - {"bpf_htons", "bpf_ntohs"}
    assert called == {name for name, _ in HELPERS.values()}


def uapi_header() -> Path | None:
    candidates = [*Path("/usr/src").glob("linux-headers-*/include/uapi/linux/bpf.h")]
    candidates.append(Path("/usr/include/linux/bpf.h"))
    return next((p for p in candidates if p.exists()), None)


def test_helper_numbers_are_the_kernels() -> None:
    header = uapi_header()
    if header is None:
        problem = "no uapi linux/bpf.h (scripts/bootstrap installs linux-headers-amd64)"
        if in_ci():
            pytest.fail(f"CI=true: {problem}")
        pytest.skip(problem)
    text = header.read_text()
    mapper = text[text.index("#define __BPF_FUNC_MAPPER") :]
    # FN(name) in order (up to 6.1), or FN(name, number, ...) (6.2 on).
    entries = re.findall(r"FN\((\w+)(?:,\s*(\d+))?", mapper.split("\n\n", 1)[0])
    numbers = {name: int(n) if n else i for i, (name, n) in enumerate(entries)}
    for number, (name, _) in HELPERS.items():
        assert numbers[name.removeprefix("bpf_")] == number, name
