"""The Kubernetes install: manifests validate against the Kubernetes OpenAPI schemas (default
and non-default values), values are checked, RBAC grants exactly what the code calls, and
install/uninstall speak server-side apply to the (fake) API server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from ambientctl import kubeapply, kubeverbs
from ambientctl.install import InstallError, load_values, render, render_waypoint
from api import validate
from sources import kube
from tests.fakekube import FakeKube, serving
from ztunnel.waypoint import main as waypoint_main

K8S_VERSION = "1.34"  # a current release (kubernetes-validate carries up to 1.37)
CUSTOM = [
    "namespace=mesh-x",
    "image=registry.example.com/mesh/ambientmesh@sha256:" + "a" * 64,
    "imagePullPolicy=Always",
    "trustDomain=corp.example.org",
    "workloadCertTTL=3600",
    "controllerReplicas=3",
    "installIstioCRDs=false",
    "maxUnavailable=2",
]


@pytest.mark.parametrize("overrides", [[], CUSTOM], ids=["defaults", "custom"])
def test_every_manifest_validates_against_the_kubernetes_schemas(
    overrides: list[str], tmp_path: Path
) -> None:
    objects = render(load_values(overrides), tmp_path / "ca")
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "Secret",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "Deployment",
    } <= kinds
    assert {"PodDisruptionBudget", "Service", "DaemonSet"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_custom_values_reach_every_object(tmp_path: Path) -> None:
    objects = render(load_values(CUSTOM), tmp_path / "ca")
    assert "CustomResourceDefinition" not in {o["kind"] for o in objects}
    namespaced = [o for o in objects if o["metadata"].get("namespace")]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"mesh-x"}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    controller = by_name["Deployment", "ambientmesh-controller"]
    assert controller["spec"]["replicas"] == 3
    args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "corp.example.org" in args and "3600" in args
    ztunnel = by_name["DaemonSet", "ztunnel"]["spec"]["template"]["spec"]["containers"][0]
    assert "ambientmesh-controller.mesh-x.svc:15012" in ztunnel["args"]
    assert ztunnel["image"].endswith("a" * 64)
    assert ztunnel["imagePullPolicy"] == "Always"
    node_agent = by_name["DaemonSet", "ambientmesh-node-agent"]["spec"]
    assert node_agent["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 2
    assert "$(NODE_NAME)" in node_agent["template"]["spec"]["containers"][0]["args"]


def test_ca_dir_becomes_secret_and_root_configmap(tmp_path: Path) -> None:
    objects = render(load_values([]), tmp_path / "ca")
    secret = next(o for o in objects if o["kind"] == "Secret")
    assert secret["metadata"]["name"] == "cacerts"
    assert {"ca-cert.pem", "ca-key.pem", "root-cert.pem"} <= set(secret["data"])
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0, "key readable by others"
    root = next(o for o in objects if o["kind"] == "ConfigMap")
    assert root["data"]["root-cert.pem"].startswith("-----BEGIN CERTIFICATE-----")
    again = render(load_values([]), tmp_path / "ca")  # the same root, not a new one
    assert next(o for o in again if o["kind"] == "Secret")["data"] == secret["data"]


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("image=evil\n  injected: true", "not an image reference"),
        ("namespace=Bad_Name", "not a DNS label"),
        ("workloadCertTTL=60", "600.."),
        ("controllerReplicas=zero", "not an integer"),
        ("installIstioCRDs=maybe", "true or false"),
        ("nokey", "want key=value"),
        ("colour=blue", "unknown value"),
    ],
)
def test_bad_values_are_refused_with_a_reason(item: str, problem: str) -> None:
    with pytest.raises(InstallError, match=problem):
        load_values([item])


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _watches(resources: tuple[kube.Resource, ...]) -> set[tuple[str, str, str]]:
    return {(r.group, r.plural, verb) for r in resources for verb in ("list", "watch")}


def test_rbac_grants_exactly_what_the_code_calls() -> None:
    roles = {
        o["metadata"]["name"]: o for o in render(load_values([])) if o["kind"] == "ClusterRole"
    }
    review = {("authentication.k8s.io", "tokenreviews", "create")}  # controller.ca.tokenreview
    status = {("security.istio.io", "authorizationpolicies/status", "patch")}  # controller.status
    assert _grants(roles["ambientmesh-controller"]) == _watches(kube.RESOURCES) | review | status
    assert _grants(roles["ambientmesh-node-agent"]) == _watches(kube.node_agent_resources())
    bindings = [o for o in render(load_values([])) if o["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    ztunnel_roles = [b for b in bindings if b["subjects"][0]["name"] == "ztunnel"]
    assert ztunnel_roles == [], "ztunnel needs no API access"


def test_waypoint_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render_waypoint(load_values([]), "demo", "wp", tmp_path / "ca")
    gateway, root, account, deployment = objects
    assert [o["kind"] for o in objects] == ["Gateway", "ConfigMap", "ServiceAccount", "Deployment"]
    # Stored with the CRD's default, as the API server stores it.
    same = {"namespaces": {"from": "Same"}}
    assert validate(gateway)["spec"]["listeners"] == [
        {"name": "mesh", "port": 15008, "protocol": "HBONE", "allowedRoutes": same}
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"demo"}
    assert (root["metadata"]["name"], account["metadata"]["name"]) == ("ambientmesh-ca-root", "wp")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "wp"
    assert pod["spec"]["serviceAccountName"] == "wp"
    # The container's arguments are ones the waypoint accepts (Kubernetes mode).
    args = pod["spec"]["containers"][0]["args"]
    assert args[:3] == ["python3", "-m", "ztunnel.waypoint.main"]
    for name in ("POD_NAME", "POD_NAMESPACE", "SERVICE_ACCOUNT"):
        monkeypatch.setenv(name, "x")
    settings = waypoint_main.parse_args(args[3:])
    assert (settings.gateway, settings.trust_domain) == ("wp", "cluster.local")


def test_install_and_uninstall_against_the_api_server(tmp_path: Path) -> None:
    objects = render(load_values([]), tmp_path / "ca")

    async def main() -> None:
        fake = FakeKube()
        async with serving(fake) as api:
            applied = await kubeapply.apply(api, objects)
            assert len(applied) == len(objects)
            assert all(
                a["query"] == {"fieldManager": "ambientctl", "force": "true"} for a in fake.applied
            )
            assert fake.applied[0]["path"] == "/api/v1/namespaces/ambientmesh-system"
            ds = [a for a in fake.applied if a["path"].endswith("/daemonsets/ztunnel")]
            assert ds and ds[0]["path"].startswith("/apis/apps/v1/namespaces/ambientmesh-system/")
            fake.applied.clear()
            cleaner = kubeverbs.cleanup_daemonset(objects)
            await kubeapply.apply(api, [cleaner])
            await kubeapply.wait_rolled_out(api, cleaner, timeout_s=5)
            await kubeapply.delete(api, objects)
            first = fake.applied[0]
            assert first["verb"] == "apply"
            assert first["object"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == (
                "--cleanup"
            )
            deletes = [a["path"] for a in fake.applied if a["verb"] == "delete"]
            assert deletes[-1] == "/api/v1/namespaces/ambientmesh-system", "namespace goes last"
            assert fake.live == {}

    asyncio.run(main())
