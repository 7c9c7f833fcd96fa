"""Cluster sources: where the controller and node agents learn the cluster's objects.

One cache (`base.Cache`) and two ways to fill it — the local store (`local`) and the Kubernetes
API (`kube`). Everything above reads immutable `ObjectSet` revisions from the cache and cannot
tell which source filled it.
"""
