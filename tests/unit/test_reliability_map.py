"""tests/RELIABILITY_MAP.md cannot go stale: every case of the catalogue (../shared/RELIABILITY.md,
beside the repository as CI lays it) has a row, every test a row names exists, and a row that
does not hold says what is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ci import in_ci

REPO = Path(__file__).resolve().parents[2]
MAP = REPO / "tests" / "RELIABILITY_MAP.md"
CATALOGUE = REPO.parent / "shared" / "RELIABILITY.md"
STATUSES = ("holds", "partial", "open")


def rows() -> dict[str, tuple[str, list[str], str]]:
    out = {}
    for line in MAP.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[A-Z]-\d+", cells[0]):
            ident, status, tests, missing = cells
            assert ident not in out, f"{ident} twice"
            out[ident] = (status, [t.strip() for t in tests.split(",") if t.strip()], missing)
    return out


def test_every_catalogue_case_has_a_row() -> None:
    if not CATALOGUE.exists():
        if in_ci():
            pytest.fail(f"CI=true: no catalogue at {CATALOGUE}")
        pytest.skip(f"no catalogue at {CATALOGUE}")
    cases = re.findall(r"^\| ([A-Z]-\d+) \|", CATALOGUE.read_text(), re.MULTILINE)
    assert len(cases) > 50
    assert sorted(cases) == sorted(rows()), "the map and the catalogue list different cases"


@pytest.mark.parametrize(("ident", "row"), sorted(rows().items()))
def test_each_row_names_tests_that_exist(ident: str, row: tuple[str, list[str], str]) -> None:
    status, tests, missing = row
    assert status in STATUSES, f"{ident}: status {status!r}"
    assert tests or status == "open", f"{ident}: {status} without a test"
    assert missing or status == "holds", f"{ident}: {status} without saying what is missing"
    for test in tests:
        path, _, name = test.partition("::")
        source = (REPO / path).read_text()
        assert re.search(rf"^(async )?def {re.escape(name)}\(", source, re.MULTILINE), test
