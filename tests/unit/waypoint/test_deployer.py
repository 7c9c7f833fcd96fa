"""The local cluster's waypoint deployer: a pod per waypoint Gateway, none for the rest."""

from __future__ import annotations

from typing import Any

from api import validate
from api.ambient import DATAPLANE_MODE, GATEWAY_NAME
from api.objects import ObjectRef
from localcluster import waypoints
from localcluster.store import ObjectSet
from sources.base import ref


def gateway(name: str, ns: str, cls: str = "istio-waypoint") -> dict[str, Any]:
    return validate(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "gatewayClassName": cls,
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        }
    )


def objects(*objs: dict[str, Any]) -> ObjectSet:
    return ObjectSet({ref(o): o for o in objs}, 1)


def test_each_waypoint_gateway_gets_one_pod_running_as_its_name() -> None:
    found = waypoints.missing(
        objects(gateway("wp", "a"), gateway("edge", "a", cls="istio")), "c", "172.18.0.2:15012"
    )
    assert len(found) == 1
    pod = validate(found[0])
    assert (pod["metadata"]["namespace"], pod["metadata"]["name"]) == ("a", "wp")
    assert pod["spec"]["serviceAccountName"] == "wp"
    assert pod["metadata"]["labels"] == {GATEWAY_NAME: "wp", DATAPLANE_MODE: "none"}
    container = pod["spec"]["containers"][0]
    assert container["command"][-2:] == ["--gateway", "wp"]
    assert container["args"] == ["--cluster", "c", "--controller", "172.18.0.2:15012"]
    existing = objects(gateway("wp", "a"), pod)
    assert waypoints.missing(existing, "c", "x") == [], "one pod, not one per apply"
    assert waypoints.orphaned(existing) == []


def test_a_pod_whose_gateway_is_gone_is_orphaned() -> None:
    pod = validate(waypoints.pod_for(gateway("wp", "a"), "c", "x"))
    assert waypoints.orphaned(objects(pod)) == [ObjectRef("Pod", "a", "wp")]
    not_a_waypoint = gateway("wp", "a", cls="istio")
    assert waypoints.orphaned(objects(not_a_waypoint, pod)) == [ObjectRef("Pod", "a", "wp")]
