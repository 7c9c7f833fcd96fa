"""RELIABILITY W-4 / W-6, the path bypass: what policy judges is exactly what the upstream
receives. Hostile paths from Envoy's and Istio's path-normalization tests and the OWASP
path-traversal list, each with the answer (400) or the path the backend receives."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.mesh import Normalization
from ztunnel.waypoint import paths
from ztunnel.waypoint.authz import compile_l7, evaluate_l7
from ztunnel.waypoint.exchange import Flow, Refused, policy_request

BASE, MERGE, DECODE, NONE = (
    Normalization.BASE,
    Normalization.MERGE_SLASHES,
    Normalization.DECODE_AND_MERGE_SLASHES,
    Normalization.NONE,
)
BAD = None  # refused with 400

HOSTILE = [
    # encoded dot segments (CVE-2021-31920 class): decoded, then removed
    ("/api/%2e%2e/admin", "/admin"),
    ("/api/%2E%2E/admin", "/admin"),
    ("/api/.%2e/admin", "/admin"),
    ("/api/%2e./admin", "/admin"),
    ("/api/%2e/admin", "/api/admin"),
    ("/./admin", "/admin"),
    ("/api/./admin", "/api/admin"),
    ("/api/../../../admin", "/admin"),
    ("/api//../admin", "/api/admin"),  # RFC 3986 §5.2.4: ".." removes the empty segment
    ("/api/admin/.", "/api/admin/"),
    ("/api/admin/..", "/api/"),
    ("/..", "/"),
    # dot segments with parameters (Tomcat, Spring): refused
    ("/api/..;/admin", BAD),
    ("/api/.;/admin", BAD),
    ("/api/..;x=1/admin", BAD),
    ("/api/%2e%2e;/admin", BAD),
    ("/api/..%3b/admin", BAD),
    ("/api/..%3B/admin", BAD),
    # encoded slashes and backslashes: refused under BASE
    ("/api/..%2fadmin", BAD),
    ("/api/..%2Fadmin", BAD),
    ("/api/%2e%2e%2fadmin", BAD),
    ("/api/%2e%2e%2f%2e%2e%2fadmin", BAD),
    ("/api/..%5cadmin", BAD),
    ("/api/%2e%2e%5Cadmin", BAD),
    ("/api%2fadmin", BAD),
    # backslashes: read as "/", as Envoy and browsers do
    ("/api/..\\admin", "/admin"),
    ("/api\\..\\admin", "/admin"),
    ("\\admin", BAD),  # not origin form: it does not start with "/"
    # double encoding: decoded once only, so the backend gets it encoded once
    ("/api/%252e%252e/admin", "/api/%252e%252e/admin"),
    ("/api/%25%32%65%25%32%65/admin", "/api/%252e%252e/admin"),
    ("/api/%252f/admin", "/api/%252f/admin"),
    # overlong UTF-8 forms of "." and "/": refused
    ("/api/%c0%ae%c0%ae/admin", BAD),
    ("/api/%C0%AE./admin", BAD),
    ("/api/%c0%af../admin", BAD),
    ("/api/..%c1%9cadmin", BAD),
    ("/api/%e0%80%ae%e0%80%ae/admin", BAD),
    ("/api/%f0%80%80%ae/admin", BAD),
    ("/api/%c3%a9t%c3%a9", "/api/%C3%A9t%C3%A9"),  # valid UTF-8 stays encoded
    # NUL, CR, LF, controls, '#', space, raw non-ASCII: refused
    ("/api/%00/admin", BAD),
    ("/api/..%00/admin", BAD),
    ("/api/%0d%0aSet-Cookie:x", BAD),
    ("/api/%0A", BAD),
    ("/api/%7f", BAD),
    ("/api/\x00", BAD),
    ("/api/x\r\n", BAD),
    ("/api/x\t", BAD),
    ("/api/x#/../admin", BAD),
    ("/api/x y", BAD),
    ("/api/\u00e9", BAD),
    # malformed escapes, and IIS's %u form: refused
    ("/api/%zz", BAD),
    ("/api/%", BAD),
    ("/api/%2", BAD),
    ("/api/%u002e%u002e/admin", BAD),
    ("/api/<script>", BAD),
    # case: kept (Istio matches paths case-sensitively); unreserved escapes decoded
    ("/API/admin", "/API/admin"),
    ("/api/%41dmin", "/api/Admin"),
    ("/api/%7euser", "/api/~user"),
    ("/api/%5Fx%2D%30", "/api/_x-0"),
    ("/api/%3a", "/api/%3A"),  # reserved: stays encoded, hex upper-cased
    # repeated slashes: kept under BASE (Istio's default); MERGE_SLASHES merges them
    ("//admin", "//admin"),
    ("/api//admin", "/api//admin"),
    ("/api/....//admin", "/api/....//admin"),  # "...." is a name
    # parameters that are not dot segments, and queries: kept as they came
    ("/api/x;jsessionid=1", "/api/x;jsessionid=1"),
    ("/api/x?next=/../admin", "/api/x?next=/../admin"),
    ("/api/x?%2e%2e", "/api/x?%2e%2e"),
    ("/api/../x?y=%2F", "/x?y=%2F"),
    # request-target forms
    ("api/admin", BAD),
    ("*", BAD),  # only OPTIONS has the asterisk form
    ("http://evil.example/api/../admin", "/admin"),
    ("HTTP://evil.example", "/"),
    ("http://user@evil.example/api", BAD),
    ("http:///api", BAD),
    ("ftp://evil.example/api", BAD),
    ("evil.example:80", BAD),  # authority form is CONNECT's
]


def flow(mode: Normalization = BASE) -> Flow:
    return Flow("10.244.1.3", "cluster.local/ns/demo/sa/client", "10.96.0.11", 8080, mode)


def forwarded(target: str, mode: Normalization = BASE, method: str = "GET") -> str | None:
    """The request-target the upstream would receive, or None for a 400."""
    try:
        request = policy_request(flow(mode), method, target, "server", [("host", "server")])
    except Refused as exc:
        status = exc.status
    else:
        assert request.target.partition("?")[0] == request.path, "policy judged another path"
        return request.target
    assert status == 400
    return None


def test_the_table_has_forty_hostile_paths() -> None:
    assert len(HOSTILE) >= 40


@pytest.mark.parametrize(("target", "backend"), HOSTILE)
def test_hostile_paths_under_base(target: str, backend: str | None) -> None:
    assert forwarded(target) == backend


@pytest.mark.parametrize(
    ("mode", "target", "backend"),
    [
        (MERGE, "//admin", "/admin"),
        (MERGE, "/api//x///y", "/api/x/y"),
        (MERGE, "/api//../admin", "/api/admin"),
        (MERGE, "/api/%2fadmin", BAD),
        (MERGE, "/api\\\\admin", "/api/admin"),
        (DECODE, "/api/%2fadmin", "/api/admin"),
        (DECODE, "/api%2F..%2Fadmin", "/admin"),
        (DECODE, "/api/%5c../admin", "/api/admin"),  # "/api//../admin"
        (DECODE, "/a%2F%2Fb", "/a/b"),
        (DECODE, "/api/..;/admin", BAD),
        (DECODE, "/api/%00", BAD),
        (NONE, "/api/%2e%2e/admin", "/api/%2e%2e/admin"),  # Istio: forwarded exactly as-is
        (NONE, "/api/..;/admin", "/api/..;/admin"),
        (NONE, "//admin", "//admin"),
        (NONE, "/api/%00", BAD),
        (NONE, "/api/x\r", BAD),
        (NONE, "/api/x#y", BAD),
    ],
)
def test_hostile_paths_under_the_other_modes(
    mode: Normalization, target: str, backend: str | None
) -> None:
    assert forwarded(target, mode) == backend


def test_options_asterisk_is_forwarded_as_it_is() -> None:
    assert forwarded("*", method="OPTIONS") == "*"


def test_http2_paths_have_no_absolute_form() -> None:
    with pytest.raises(Refused):
        policy_request(flow(), "GET", "http://evil/admin", "server", [], absolute=False)


def test_an_absolute_form_target_authority_replaces_host() -> None:
    request = policy_request(flow(), "GET", "http://other:8080/x", "server", [("host", "server")])
    assert (request.host, request.target) == ("other:8080", "/x")


@pytest.mark.parametrize("method", ["get", "Get", "gEt"])
def test_a_method_not_upper_case_gets_400(method: str) -> None:
    with pytest.raises(Refused):
        policy_request(flow(), method, "/", "server", [])


def test_allow_api_prefix_never_lets_a_hostile_path_reach_anything_else() -> None:
    """The bypass itself: with ALLOW paths ["/api/*"], a request is allowed exactly when the
    path the backend receives is under /api/."""
    allow = compile_l7(
        {
            "metadata": {"namespace": "demo", "name": "api"},
            "spec": {
                "targetRefs": [{"kind": "Service", "group": "", "name": "server"}],
                "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}],
            },
        }
    )
    assert allow is not None
    for target, _ in HOSTILE:
        try:
            request = policy_request(flow(), "GET", target, "server", [])
        except Refused:
            continue
        allowed = evaluate_l7([allow], "demo", "waypoint", ["server"], request).allowed
        assert allowed == request.target.startswith("/api/"), target


HOSTILE_ALPHABET = ["/", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "%3b", "a", "%25", "//"]


@given(
    st.lists(st.sampled_from(HOSTILE_ALPHABET), max_size=10),
    st.sampled_from(list(paths.Normalization)),
)
def test_what_is_forwarded_is_what_a_normalizing_backend_sees(
    pieces: list[str], mode: Normalization
) -> None:
    """A backend that normalizes again (once more, or after decoding every escape once) finds
    no dot segment and no other path than the one policy judged."""
    target = "/" + "".join(pieces)
    out = forwarded(target, mode)
    if out is None or mode is NONE:
        return
    assert paths.normalize("GET", out, mode).forward == out, "normalizing twice changed it"
    decoded = unquote(out).split("/")
    assert "." not in decoded[1:] and ".." not in decoded[1:], out
    assert "\\" not in out


@given(st.lists(st.sampled_from(["", ".", "..", "...", "a", "b.", ".c", "%2E", "a;b"]), max_size=6))
def test_paths_passed_as_they_are_are_the_fully_normalized_ones(segments: list[str]) -> None:
    """The fast path (no '%', '\\', '/.' or '//') returns what the full normalization would."""
    path = "/" + "/".join(segments)
    for mode in (BASE, MERGE, DECODE):
        try:
            full = paths.normal_path(path, mode)
        except paths.BadPath:
            with pytest.raises(paths.BadPath):
                paths.normalize("GET", path, mode)
            continue
        assert paths.normalize("GET", path, mode).path == full
