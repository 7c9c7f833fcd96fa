"""The local cluster's waypoint deployer (pure): what Istio's gateway controller does for a
Gateway of class `istio-waypoint` — run a proxy for it as a pod of the Gateway's namespace,
named and running as the Gateway's name (Istio's Deployment and ServiceAccount naming), labelled
with `gateway.networking.k8s.io/gateway-name` and never captured itself
(`istio.io/dataplane-mode=none`).
"""

from __future__ import annotations

import sys

from api.ambient import DATAPLANE_MODE, GATEWAY_NAME, MODE_NONE, WAYPOINT_CLASS, waypoint_of
from api.objects import Obj, ObjectRef, ref_of
from localcluster import naming
from localcluster.store import ObjectSet

GRACE_S = 5  # the waypoint drains for `--drain` 5 s; Istio's waypoint template uses 2 s


def is_waypoint(gateway: Obj) -> bool:
    return bool((gateway.get("spec") or {}).get("gatewayClassName") == WAYPOINT_CLASS)


def pod_for(gateway: Obj, cluster: str, controller: str) -> Obj:
    """The pod runs host code like every local pod; it finds the cluster's state (its token,
    the trust bundle) where `ambientctl` keeps it."""
    meta = gateway["metadata"]
    name = meta["name"]
    command = [sys.executable, "-m", "ztunnel.waypoint.main", "--gateway", name]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {GATEWAY_NAME: name, DATAPLANE_MODE: MODE_NONE},
        },
        "spec": {
            "serviceAccountName": name,
            "terminationGracePeriodSeconds": GRACE_S + 2,
            "containers": [
                {
                    "name": "istio-proxy",
                    "command": command,
                    "args": ["--cluster", cluster, "--controller", controller],
                    "env": [
                        {"name": "SERVICE_ACCOUNT", "value": name},
                        {"name": naming.STATE_DIR_ENV, "value": str(naming.state_dir())},
                    ],
                }
            ],
        },
    }


def missing(objects: ObjectSet, cluster: str, controller: str) -> list[Obj]:
    """Pods to create: one for each waypoint Gateway without its pod."""
    have = {
        (p["metadata"]["namespace"], waypoint_of(p)) for p in objects.list("Pod") if waypoint_of(p)
    }
    return [
        pod_for(g, cluster, controller)
        for g in objects.list("Gateway")
        if is_waypoint(g) and (g["metadata"]["namespace"], g["metadata"]["name"]) not in have
    ]


def orphaned(objects: ObjectSet) -> list[ObjectRef]:
    """Waypoint pods whose Gateway is gone (or no longer a waypoint)."""
    gateways = {
        (g["metadata"]["namespace"], g["metadata"]["name"])
        for g in objects.list("Gateway")
        if is_waypoint(g)
    }
    return [
        ref_of(p)
        for p in objects.list("Pod")
        if waypoint_of(p) and (p["metadata"]["namespace"], waypoint_of(p)) not in gateways
    ]
