"""The C verdict registry and its Python mirror stay equal; the dumped program is complete."""

from __future__ import annotations

import re
from pathlib import Path

from bpf.loader import MAP_VERSION, final_source, remove_other_versions
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


def test_every_pinned_map_is_named_with_the_map_version() -> None:
    """A layout change bumps MAP_VERSION; a map pinned without it would be reused by an agent
    of another layout (BCC reuses a pin whatever its layout)."""
    pins = re.findall(r'BPF_TABLE_PINNED\([^;]*?PIN_DIR "/(\w+)" MAP_VERSION\)', final_source())
    tables = re.findall(r"BPF_TABLE_PINNED\(", final_source())
    assert sorted(pins) == ["config_", "enrolled_", "verdicts_"] and len(tables) == 3


def test_only_the_maps_of_other_versions_are_unpinned(tmp_path: Path) -> None:
    names = ["enrolled_v0", "config_v0", "verdicts_v2", f"enrolled_{MAP_VERSION}"]
    names += [f"config_{MAP_VERSION}", "notes_v0", "enrolled_vx"]
    for name in names:
        (tmp_path / name).touch()
    assert remove_other_versions(tmp_path) == ["config_v0", "enrolled_v0", "verdicts_v2"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [f"enrolled_{MAP_VERSION}", f"config_{MAP_VERSION}", "notes_v0", "enrolled_vx"]
    )
    assert remove_other_versions(tmp_path / "absent") == []
