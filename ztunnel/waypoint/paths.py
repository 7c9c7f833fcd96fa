"""The one path normalization of the waypoint (RELIABILITY W-4, W-6; DESIGN pipeline step 1).

Policy judges the normalized path and the upstream receives exactly that path (and the query as
it came), so a backend that normalizes on its own cannot be handed something policy never saw.
Pure; called once per request by `exchange.policy_request`.

Modes are Istio's MeshConfig `pathNormalization.normalization` (default BASE):
- NONE: the path as it came (Istio: "forwarded exactly as-is").
- BASE: RFC 3986 §6.2.2: percent-encodings of unreserved characters decoded (Istio's table:
  `%2d %2e %30-%39 %41-%5a %5f %61-%7a %7e`), the others' hex upper-cased; `\\` read as `/`
  (Envoy, as browsers, does so); dot segments removed (§5.2.4). Repeated slashes are kept.
- MERGE_SLASHES: BASE, then runs of `/` merged.
- DECODE_AND_MERGE_SLASHES: `%2F` and `%5C` decoded first (to `/`), then MERGE_SLASHES.

Refused with 400, where we are stricter than Envoy because backends disagree on the meaning:
- NUL, CR, LF and other controls, space, `#`, raw non-ASCII, and `%00` (Istio always rejects
  it) — in every mode;
- in the normalizing modes: characters outside RFC 3986's path (`"`, `<`, `{` ...), a malformed
  `%` escape, an encoded `/` or `\\` unless the mode decodes it (Envoy's
  `path_with_escaped_slashes_action: REJECT_REQUEST`; its default keeps them, and a backend
  that decodes them walks past a prefix rule); encoded CR/LF and other controls; overlong
  UTF-8 (`%c0%ae` is `.` to a lenient decoder); a dot segment with `;` parameters (`..;`:
  Tomcat and Spring read it as `..`, Envoy as a name).

Request targets: origin form (`/p?q`), absolute form (`http://host/p`: the path is taken and
the authority replaces Host, RFC 9112 §3.2.2), and `*` for OPTIONS (RFC 9112 §3.2.4). Anything
else (authority form is CONNECT's, which the waypoint does not proxy) is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from api.mesh import DEFAULT_NORMALIZATION as DEFAULT
from api.mesh import Normalization

__all__ = ["DEFAULT", "BadPath", "Normalization", "Target", "normal_path", "normalize"]


class BadPath(ValueError):
    """A request target refused before policy (400); the message says why."""


@dataclass(frozen=True)
class Target:
    """A request target after normalization."""

    path: str  # what policy matches: normalized, without the query
    forward: str  # the request-target the upstream receives: `path` and the query as it came
    authority: str | None = None  # from an absolute-form target: it replaces Host


# What may stand in a path: RFC 3986 pchar and "/", "%" of an escape, "\\" (read as "/").
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%\\]*")
_UNSAFE = re.compile(r"[^\x21-\x7e]|#")  # controls, space, DEL, non-ASCII, a fragment
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = frozenset(b"/\\")
_ABSOLUTE = re.compile(r"(?i)https?://([^/?#]*)(.*)")
_DOT_PARAMS = re.compile(r"(?:^|/)\.\.?(?:;|%3B)", re.IGNORECASE)
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize(
    method: str, target: str, mode: Normalization = DEFAULT, *, absolute: bool = True
) -> Target:
    """The target's normalized form under `mode`; BadPath for what is refused. `absolute`:
    whether the absolute form is allowed (HTTP/1.1's; HTTP/2's `:path` has none)."""
    if (bad := _UNSAFE.search(target)) is not None:
        raise BadPath(f"request target has {bad.group()!r} (control, space, '#' or non-ASCII)")
    authority = None
    if not target.startswith("/"):
        if target == "*" and method == "OPTIONS":
            return Target("*", "*")
        uri = _ABSOLUTE.fullmatch(target) if absolute else None
        if uri is None or not uri.group(1):
            raise BadPath("request target is not origin, absolute or asterisk form")
        if "@" in uri.group(1):  # userinfo: never sent in http(s) URIs (RFC 9110 §4.2.4)
            raise BadPath("userinfo in the request target's authority")
        authority, target = uri.group(1), uri.group(2) or "/"
        if not target.startswith("/"):  # "http://host?q": an empty path is "/" (RFC 9112)
            target = "/" + target
    path, sep, query = target.partition("?")
    if "%00" in path or "%00" in query:
        raise BadPath("encoded NUL in the request target")
    if mode is Normalization.NONE:
        return Target(path, target, authority)
    if not _PLAIN.fullmatch(path):
        raise BadPath("request path has characters outside RFC 3986")
    if "%" not in path and "\\" not in path and "/." not in path and "//" not in path:
        return Target(path, target, authority)  # already normal (most requests)
    normal = normal_path(path, mode)
    return Target(normal, normal + sep + query, authority)


def normal_path(path: str, mode: Normalization) -> str:
    """An origin-form path (no query) normalized under a normalizing `mode`, or BadPath."""
    normal = _decode(path, mode).replace("\\", "/")
    if _DOT_PARAMS.search(normal):
        raise BadPath("dot segment with ';' parameters")
    normal = remove_dot_segments(normal)
    return normal if mode is Normalization.BASE else re.sub("//+", "/", normal)


def _decode(path: str, mode: Normalization) -> str:
    """Percent-decode what the mode decodes; upper-case the hex of what stays encoded."""
    if "%" not in path:
        return path
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise BadPath("malformed percent-encoding in the path")
        byte = int(part[:2], 16)
        if byte < 0x20 or byte == 0x7F:
            raise BadPath(f"encoded control character %{byte:02X} in the path")
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte in _SLASHES:
            if mode is not Normalization.DECODE_AND_MERGE_SLASHES:
                raise BadPath("encoded '/' or '\\' in the path (the mode keeps no such path)")
            out.append("/")
        else:
            out.append(f"%{byte:02X}")
        out.append(part[2:])
    if _overlong(unquote_to_bytes(path)):
        raise BadPath("overlong UTF-8 in the path")
    return "".join(out)


def _overlong(raw: bytes) -> bool:
    """Whether the escaped bytes hold an overlong UTF-8 form (a 2-byte C0/C1 lead, or a 3- or
    4-byte form with a too-small first continuation): never valid UTF-8 (RFC 3629 §3), and
    what old decoders turned into '.' and '/'."""
    for i, byte in enumerate(raw):
        nxt = raw[i + 1] if i + 1 < len(raw) else 0xFF
        if byte in (0xC0, 0xC1) or (byte == 0xE0 and nxt < 0xA0) or (byte == 0xF0 and nxt < 0x90):
            return True
    return False


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: `.` segments go, `..` removes the one before
    (never above the root). Empty segments are kept: merging them is the modes' business."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)
