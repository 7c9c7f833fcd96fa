"""ztunnel's side of config updates: an accepted one replaces the snapshot; a rejected one
fails closed for the namespaces whose policies it carried, until the next accepted one (F-11)."""

from __future__ import annotations

from pathlib import Path

from controller.config.compile import Proxy, compile_mesh, view
from tests.unit.ztunnel.test_routing import objects
from ztunnel.main import Settings, Ztunnel


def test_rejected_update_fails_closed_until_an_accepted_one(tmp_path: Path) -> None:
    settings = Settings(
        cluster="unused",
        node="node2",
        controller="127.0.0.1:1",
        token_file=tmp_path / "token",
        ca_bundle=tmp_path / "root-cert.pem",
        trust_domain="cluster.local",
        workload_cert_ttl_s=3600,
    )
    z = Ztunnel(settings)
    z.on_rejected_config({"upserts": [], "removes": []})
    assert z.snapshot is None, "nothing to fail closed on before the first snapshot"
    resources = view(compile_mesh(objects()), Proxy("ztunnel", "node2"))
    z.on_config(resources, 1)
    assert z.snapshot is not None
    assert z.snapshot.unconverged == frozenset()
    z.on_rejected_config({"upserts": [{"type": "policy", "namespace": "mesh"}], "removes": []})
    assert z.snapshot.unconverged == {"mesh"}
    z.on_rejected_config({"upserts": [], "removes": ["workload/x"]})
    assert z.snapshot.unconverged == {"mesh"}, "a rejection without policies changes nothing"
    z.on_config(resources, 2)
    assert z.snapshot.unconverged == frozenset()
