"""`ambientctl get` takes the names kubectl users type: plurals, singulars and the CRDs' own
short names (issue 26)."""

from __future__ import annotations

import pytest

from ambientctl.verbs import _kind
from localcluster.cluster import ClusterError


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("ap", "AuthorizationPolicy"),
        ("authorizationpolicies", "AuthorizationPolicy"),
        ("AuthorizationPolicy", "AuthorizationPolicy"),
        ("policies", "AuthorizationPolicy"),
        ("pa", "PeerAuthentication"),
        ("peerauthentication", "PeerAuthentication"),
        ("svc", "Service"),
        ("ns", "Namespace"),
        ("po", "Pod"),
        ("gtw", "Gateway"),
        ("cm", "ConfigMap"),
    ],
)
def test_kubectl_names(word: str, kind: str) -> None:
    assert _kind(word) == kind


def test_an_unknown_name_says_so() -> None:
    with pytest.raises(ClusterError, match="unknown resource type 'vs'"):
        _kind("vs")
