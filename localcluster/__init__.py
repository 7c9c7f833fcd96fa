"""The local cluster: Kubernetes-like nodes and pods built from network namespaces on one machine.

`ambientctl` drives it. Layers, bottom up:
  naming/topology (pure: names, addresses) → store (the objects, on disk) →
  netns (kernel: namespaces, veths, routes; processes inside them) → pods (runtime: shim per pod) →
  cluster (the verbs: up, down, apply, delete, label, status) → teardown (removal by kernel names).
"""
