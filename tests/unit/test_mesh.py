"""Istio's MeshConfig (ConfigMap istio/istio-system, key `mesh`): refused at apply with the
field's path when bad, streamed to proxies as the `meshconfig` resource, read by the waypoint."""

from __future__ import annotations

from typing import Any

import pytest

from api import meshconfig
from api.errors import ObjectError
from api.mesh import Normalization
from api.objects import ref_of, validate
from controller.config.compile import Proxy, compile_mesh, view
from localcluster.store import ObjectSet
from ztunnel.waypoint.state import build


def configmap(mesh: Any, name: str = "istio", namespace: str = "istio-system") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"mesh": mesh},
    }


@pytest.mark.parametrize(
    ("mesh", "field"),
    [
        ("pathNormalization: {normalization: BOGUS}", "data.mesh.pathNormalization.normalization"),
        ("pathNormalization: BASE", "data.mesh.pathNormalization"),
        ("- a list", "data.mesh"),
        ("a: [unclosed", "data.mesh"),
        (7, "data.mesh"),
        (
            "defaultConfig: {gatewayTopology: {numTrustedProxies: -1}}",
            "data.mesh.defaultConfig.gatewayTopology.numTrustedProxies",
        ),
        (
            "defaultConfig: {gatewayTopology: {numTrustedProxies: '2'}}",
            "data.mesh.defaultConfig.gatewayTopology.numTrustedProxies",
        ),
        ("defaultConfig: []", "data.mesh.defaultConfig"),
        ("extensionProviders: {name: a}", "data.mesh.extensionProviders"),
        ("extensionProviders: [{name: a}, {name: a}]", "data.mesh.extensionProviders[1].name"),
        ("extensionProviders: [{envoyExtAuthzHttp: {}}]", "data.mesh.extensionProviders[0].name"),
    ],
)
def test_a_bad_mesh_config_is_refused_at_apply_with_its_field(mesh: Any, field: str) -> None:
    with pytest.raises(ObjectError) as err:
        validate(configmap(mesh))
    assert field in str(err.value)


def test_other_configmaps_and_unknown_meshconfig_fields_are_kept() -> None:
    validate(configmap("pathNormalization: {normalization: BOGUS}", name="other"))
    validate(
        configmap(
            "accessLogFile: /dev/stdout\ndefaultConfig: {holdApplicationUntilProxyStarts: true}"
        )
    )


@pytest.mark.parametrize(
    ("mesh", "mode"),
    [
        (None, Normalization.BASE),
        ("", Normalization.BASE),
        ("pathNormalization: {normalization: DEFAULT}", Normalization.BASE),
        ("pathNormalization: {normalization: NONE}", Normalization.NONE),
        ("pathNormalization: {normalization: MERGE_SLASHES}", Normalization.MERGE_SLASHES),
    ],
)
def test_the_waypoint_normalizes_as_the_mesh_config_says(
    mesh: str | None, mode: Normalization
) -> None:
    found = [validate(configmap(mesh))] if mesh is not None else []
    objects = ObjectSet({ref_of(o): o for o in found}, 1)
    resources = view(compile_mesh(objects), Proxy("waypoint", "demo/waypoint"))
    for res in resources.values():
        meshconfig.validate(res)  # what a proxy checks before applying
    assert ("meshconfig/mesh" in resources) == (mesh is not None)
    ztunnel = view(compile_mesh(objects), Proxy("ztunnel", "node1"))
    assert "meshconfig/mesh" not in ztunnel, "only waypoints read it (and old ztunnels NACK it)"
    assert build(resources, "demo", "waypoint", "cluster.local", 1).normalization is mode


def test_a_proxy_nacks_a_meshconfig_resource_it_cannot_read() -> None:
    bad = {"type": "meshconfig", "key": "mesh", "spec": {"pathNormalization": {"normalization": 3}}}
    with pytest.raises(meshconfig.ConfigError):
        meshconfig.validate(bad)


def test_the_waypoint_trusts_as_many_forwarded_hops_as_the_mesh_config_says() -> None:
    mesh = "defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}"
    objects = ObjectSet({ref_of(o): o for o in [validate(configmap(mesh))]}, 1)
    state = build(view(compile_mesh(objects), Proxy("waypoint", "ns/wp")), "ns", "wp", "td", 1)
    assert state.trusted_proxies == 2
