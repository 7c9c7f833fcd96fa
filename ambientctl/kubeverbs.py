"""The Kubernetes verbs: `install [--render]` and `uninstall` (no local cluster involved)."""

from __future__ import annotations

import argparse
import asyncio
import copy
from pathlib import Path

from ambientctl import kubeapply
from ambientctl.install import InstallError, Obj, load_values, render, render_waypoint, to_yaml
from sources.kube import api_client

NODE_AGENT = "ambientmesh-node-agent"


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("install", help="install on Kubernetes (or print the manifests)")
    p.add_argument("--render", action="store_true", help="print the manifests instead")
    p.add_argument(
        "--render-waypoint",
        metavar="NS/NAME",
        help="print a waypoint: Gateway, ServiceAccount, Deployment",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ca-dir", type=Path, help="Istio plug-in CA dir (a root is made if empty)")
    p.add_argument("--kubeconfig", default=None)
    p.set_defaults(func=install)
    p = sub.add_parser("uninstall", help="detach every eBPF program, then remove the install")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--crds", action="store_true", help="also delete the security.istio.io CRDs")
    p.add_argument("--kubeconfig", default=None)
    p.set_defaults(func=uninstall)


def install(args: argparse.Namespace) -> int:
    if args.render_waypoint:
        namespace, _, name = args.render_waypoint.partition("/")
        values = load_values(args.set)
        objects = render_waypoint(values, namespace, name or "waypoint", args.ca_dir)
        print(to_yaml(objects), end="")
        return 0
    values = load_values(args.set)
    if not args.render and args.ca_dir is None:
        raise InstallError("install needs --ca-dir DIR: the mesh CA (Istio's cacerts layout)")
    objects = render(values, args.ca_dir)
    if args.render:
        print(to_yaml(objects), end="")
        return 0
    for name in asyncio.run(_apply(args.kubeconfig, objects)):
        print(f"{name} applied")
    return 0


async def _apply(kubeconfig: str | None, objects: list[Obj]) -> list[str]:
    async with await api_client(kubeconfig) as api:
        return await kubeapply.apply(api, objects)


def cleanup_daemonset(objects: list[Obj]) -> Obj:
    """The node-agent DaemonSet switched to `--cleanup`: every node detaches and unpins."""
    ds = copy.deepcopy(
        next(o for o in objects if (o["kind"], o["metadata"]["name"]) == ("DaemonSet", NODE_AGENT))
    )
    container = ds["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [*container["args"], "--cleanup"]
    return ds


def uninstall(args: argparse.Namespace) -> int:
    values = load_values(args.set)
    objects = render(values)
    ns = values["namespace"]
    objects[1:1] = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": ns}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ambientmesh-ca-root", "namespace": ns},
        },
    ]
    if not args.crds:
        objects = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    for line in asyncio.run(_uninstall(args.kubeconfig, objects)):
        print(line)
    return 0


async def _uninstall(kubeconfig: str | None, objects: list[Obj]) -> list[str]:
    async with await api_client(kubeconfig) as api:
        cleaner = cleanup_daemonset(objects)
        await kubeapply.apply(api, [cleaner])
        await kubeapply.wait_rolled_out(api, cleaner)
        out = ["every node: eBPF programs detached, pins removed"]
        return out + [f"{name} deleted" for name in await kubeapply.delete(api, objects)]
