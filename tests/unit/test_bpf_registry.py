"""The C verdict registry and its Python mirror stay equal; the dumped program is complete."""

from __future__ import annotations

import re
from pathlib import Path

from bpf.loader import final_source
from bpf.verdicts import Verdict

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "lib" / "verdicts.h"


def test_verdicts_h_and_python_enum_are_equal() -> None:
    defined = {
        name: int(value)
        for name, value in re.findall(r"#define V_([A-Z_]+)\s+(\d+)", HEADER.read_text())
    }
    maximum = defined.pop("MAX")
    assert defined == {v.name: v.value for v in Verdict}
    assert maximum == len(Verdict)
    assert sorted(defined.values()) == list(range(maximum))


def test_dumped_program_inlines_our_headers_and_all_entry_points() -> None:
    text = final_source()
    assert '#include "' not in text
    for entry in ("int pod_out(", "int pod_in(", "int zt_in("):
        assert entry in text
