"""The atheris fuzz targets (tests/fuzz) in CI: every seed replays cleanly, then each target runs
under atheris for a few seconds in a subprocess and must not crash; each bug the fuzzers found
is pinned below by its input (each of these failed before its fix)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import targets as t

REPO = Path(__file__).resolve().parents[3]
REGRESSIONS = REPO / "tests" / "fuzz" / "regressions"
SECONDS = 4


@pytest.mark.parametrize("name", sorted(t.TARGETS))
def test_seed_corpus_replays(name: str) -> None:
    seeds = t.seeds(name)
    assert seeds, f"no seeds for {name}"
    run = t.tolerant(name, t.TARGETS[name].run)
    for path in seeds:
        run(path.read_bytes())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(t.TARGETS))
def test_fuzz_briefly(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/fuzz/run.py"),
            name,
            f"--seconds={SECONDS}",
            f"--corpus={tmp_path / 'corpus'}",
            f"--crashes={tmp_path / 'crashes'}",
            "--seed=1",
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 40,
        check=False,
        cwd=REPO,
    )
    crashes = list((tmp_path / "crashes").glob("*"))
    log = proc.stderr
    at = log.find("Uncaught Python exception")
    assert proc.returncode == 0 and not crashes, log[at : at + 4000] if at >= 0 else log[-4000:]


def _update(resource: dict[str, object]) -> bytes:
    return json.dumps(
        {"type": "update", "version": 1, "upserts": [resource], "removes": []}
    ).encode()


def _policy(kind: str, spec: dict[str, object]) -> bytes:
    return _update({"type": kind, "key": "demo/p", "name": "p", "namespace": "demo", "spec": spec})


FOUND: dict[str, tuple[str, bytes, type[BaseException]]] = {
    "authority_non_ascii_digit_port": ("authority", "1.2.3.4:\u00b35".encode(), ValueError),
    "manifest_yaml_unhashable_key": ("manifest", b"{[a]: 1}\n", TypeError),
    "manifest_kind_is_a_mapping": ("manifest", b"kind: {a: b}\n", TypeError),
    "config_resource_type_is_a_mapping": (
        "mesh-config",
        b'{"version": 1, "upserts": [{"type": {}}], "removes": []}',
        TypeError,
    ),
    "config_policy_selector_not_a_mapping": (
        "mesh-config",
        _policy("policy", {"selector": "x"}),
        AttributeError,
    ),
    "config_policy_rule_not_a_mapping": (
        "mesh-config",
        _policy("policy", {"rules": ["x"]}),
        AttributeError,
    ),
    "config_policy_target_ref_not_a_mapping": (
        "mesh-config",
        _policy("policy", {"targetRefs": ["x"]}),
        AttributeError,
    ),
    "config_peerauth_mtls_not_a_mapping": (
        "mesh-config",
        _policy("peerauth", {"mtls": "x"}),
        AttributeError,
    ),
    "hbone_invalid_utf8_header_value": (
        "hbone-server",
        (REGRESSIONS / "hbone-server-invalid-utf8-header").read_bytes(),
        UnicodeDecodeError,
    ),
    "hbone_client_empty_status": (
        "hbone-client",
        (REGRESSIONS / "hbone-client-empty-status").read_bytes(),
        ValueError,
    ),
    "csr_unknown_key_type": ("csr", (REGRESSIONS / "csr-unknown-key-type").read_bytes(), Exception),
    "csr_invalid_version": ("csr", (REGRESSIONS / "csr-invalid-version").read_bytes(), Exception),
}


@pytest.mark.parametrize("bug", sorted(FOUND))
def test_a_bug_the_fuzzers_found_stays_fixed(bug: str) -> None:
    """The input is refused cleanly by the target's own error types (the exception it raised
    before its fix is named beside it)."""
    name, data, _raised_before = FOUND[bug]
    t.TARGETS[name].run(data)
