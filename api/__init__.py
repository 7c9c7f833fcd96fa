"""The user-facing object model: the Kubernetes/Istio objects users write, loaded and validated.

Pure (no I/O besides reading text handed in). Used by `ambientctl` before anything reaches the
local store, and by the controller for objects watched from either cluster source.
"""

from api.errors import ManifestError, ObjectError
from api.manifest import load_manifest
from api.objects import KINDS, ObjectRef, ref_of, validate

__all__ = [
    "KINDS",
    "ManifestError",
    "ObjectError",
    "ObjectRef",
    "load_manifest",
    "ref_of",
    "validate",
]
